//! Turns AWS SDK errors into our [`AwsError`] with an [`ErrorKind`] the engine acts on, keeping
//! the AWS error code and request id. Owns the mapping only; it decides nothing about retries
//! beyond the kind, and it never prints a credential (SDK errors carry none).

use std::error::Error as StdError;

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_kms::config::http::HttpResponse;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::operation::RequestId;
use aws_sdk_sts::operation::assume_role::AssumeRoleError;

use super::{AwsError, ErrorKind};

/// Classify one failed SDK call.
pub(crate) fn classify<E>(
    operation: &'static str,
    region: &str,
    err: &SdkError<E, HttpResponse>,
) -> AwsError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    let request_id = err
        .request_id()
        .or_else(|| err.as_service_error().and_then(|e| e.meta().request_id()))
        .map(str::to_string);
    let (kind, code, message) = match err {
        SdkError::ServiceError(context) => {
            let code = context.err().code().unwrap_or("UnknownError");
            let status = context.raw().status().as_u16();
            let message = context.err().message().unwrap_or_default().to_string();
            (kind_for_code(code, status), code.to_string(), message)
        }
        SdkError::TimeoutError(_) => (
            ErrorKind::Transient,
            "Timeout".to_string(),
            cause_chain(err),
        ),
        SdkError::DispatchFailure(_) => match credentials_failure(err) {
            Some((kind, code)) => (kind, code, cause_chain(err)),
            None => (
                ErrorKind::Transient,
                "DispatchFailure".to_string(),
                cause_chain(err),
            ),
        },
        SdkError::ResponseError(context) => {
            // A reply we could not read: a dropped connection mid-response or a proxy's page.
            let status = context.raw().status().as_u16();
            let kind = if status == 429 {
                ErrorKind::Throttled
            } else {
                ErrorKind::Transient
            };
            (
                kind,
                format!("ResponseError(http {status})"),
                cause_chain(err),
            )
        }
        _ => (
            ErrorKind::Other,
            "ClientError".to_string(),
            cause_chain(err),
        ),
    };
    AwsError {
        operation,
        region: region.to_string(),
        kind,
        code,
        message,
        request_id,
    }
}

/// The engine's view of an AWS error code (and HTTP status, for codes we do not know).
pub(crate) fn kind_for_code(code: &str, status: u16) -> ErrorKind {
    match code {
        // A standard key's KMSInvalidStateException (already disabled, pending deletion) is,
        // like a store's, "look at the state and carry on".
        "CustomKeyStoreInvalidStateException" | "KMSInvalidStateException" => {
            ErrorKind::InvalidState
        }
        "CustomKeyStoreNotFoundException"
        | "NotFoundException"
        | "ResourceNotFound"
        | "ResourceNotFoundException" => ErrorKind::NotFound,
        // The token or key is unknown or expired: new credentials may well be accepted.
        "UnrecognizedClientException"
        | "InvalidClientTokenId"
        | "ExpiredToken"
        | "ExpiredTokenException" => ErrorKind::CredentialsRejected,
        "AccessDeniedException"
        | "AccessDenied"
        | "InvalidSignatureException"
        | "SignatureDoesNotMatch"
        | "IncompleteSignature"
        | "MissingAuthenticationToken" => ErrorKind::AccessDenied,
        "ThrottlingException"
        | "Throttling"
        | "ThrottledException"
        | "RequestThrottledException"
        | "TooManyRequestsException"
        | "RequestLimitExceeded"
        | "SlowDown" => ErrorKind::Throttled,
        "KMSInternalException"
        | "InternalFailure"
        | "InternalError"
        | "InternalServerError"
        | "ServiceUnavailable"
        | "ServiceUnavailableException"
        | "DependencyTimeoutException"
        | "RequestTimeout"
        | "RequestTimeoutException" => ErrorKind::Transient,
        _ if status == 429 => ErrorKind::Throttled,
        _ if status >= 500 => ErrorKind::Transient,
        _ => ErrorKind::Other,
    }
}

/// A dispatch failure caused by credentials that could not be obtained (no credentials, or STS
/// refusing the AssumeRole) is not a network blip: say which.
///
/// The walk starts at the error's *causes*, never at the error itself: an AssumeRole that could
/// not be dispatched (STS unreachable) is classified by [`classify`] again, and looking at
/// itself would recurse for ever. Each recursion is on a strictly deeper cause, so it ends.
fn credentials_failure(err: &(dyn StdError + 'static)) -> Option<(ErrorKind, String)> {
    let mut cause: Option<&(dyn StdError + 'static)> = err.source();
    let mut credentials: Option<&CredentialsError> = None;
    while let Some(current) = cause {
        if let Some(sts) = current.downcast_ref::<SdkError<AssumeRoleError, HttpResponse>>() {
            let inner = classify("AssumeRole", "", sts);
            return Some((inner.kind, format!("AssumeRole: {}", inner.code)));
        }
        if credentials.is_none() {
            credentials = current.downcast_ref::<CredentialsError>();
        }
        cause = current.source();
    }
    credentials.map(|credentials| match credentials {
        CredentialsError::CredentialsNotLoaded(_) => {
            (ErrorKind::AccessDenied, "CredentialsNotLoaded".to_string())
        }
        CredentialsError::InvalidConfiguration(_) => (
            ErrorKind::AccessDenied,
            "InvalidCredentialsConfiguration".to_string(),
        ),
        CredentialsError::ProviderTimedOut(_) => (
            ErrorKind::Transient,
            "CredentialsProviderTimedOut".to_string(),
        ),
        _ => (ErrorKind::Transient, "CredentialsProviderError".to_string()),
    })
}

/// The error and its causes as one readable line (`a: b: c`), skipping a cause whose text its
/// parent already ends with. Unlike the SDK's `DisplayErrorContext`, no Debug dump is appended.
fn cause_chain(err: &(dyn StdError + 'static)) -> String {
    let mut line = err.to_string();
    let mut cause = err.source();
    while let Some(current) = cause {
        let text = current.to_string();
        if !text.is_empty() && !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = current.source();
    }
    line
}
