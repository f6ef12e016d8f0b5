//! Reading operation inputs (already decoded to JSON from awsJson or CBOR) with AWS-shaped
//! validation errors. Knows no operation.

use serde_json::Value as Json;

use crate::protocol::ApiError;

/// Input helpers bound to the validation error code of the service (`ValidationException` for
/// KMS, `InvalidParameterValue` for CloudWatch).
pub(crate) struct Input<'a> {
    pub json: &'a Json,
    pub validation_code: &'static str,
}

impl<'a> Input<'a> {
    fn invalid(&self, message: String) -> ApiError {
        ApiError::bad(self.validation_code, message)
    }

    pub(crate) fn opt_str(&self, field: &str) -> Result<Option<&'a str>, ApiError> {
        match self.json.get(field) {
            None | Some(Json::Null) => Ok(None),
            Some(Json::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(self.invalid(format!("{field} must be a string"))),
        }
    }

    pub(crate) fn req_str(&self, field: &str) -> Result<&'a str, ApiError> {
        self.opt_str(field)?.ok_or_else(|| {
            self.invalid(format!(
                "1 validation error detected: Value null at '{field}' failed to satisfy constraint: Member must not be null"
            ))
        })
    }

    pub(crate) fn opt_int(&self, field: &str) -> Result<Option<i64>, ApiError> {
        match self.json.get(field) {
            None | Some(Json::Null) => Ok(None),
            Some(Json::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| self.invalid(format!("{field} must be an integer"))),
            Some(_) => Err(self.invalid(format!("{field} must be an integer"))),
        }
    }

    pub(crate) fn opt_str_list(&self, field: &str) -> Result<Option<Vec<&'a str>>, ApiError> {
        match self.json.get(field) {
            None | Some(Json::Null) => Ok(None),
            Some(Json::Array(items)) => items
                .iter()
                .map(|item| {
                    item.as_str()
                        .ok_or_else(|| self.invalid(format!("{field} must be a list of strings")))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(self.invalid(format!("{field} must be a list of strings"))),
        }
    }
}
