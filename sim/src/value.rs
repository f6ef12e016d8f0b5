//! A small document model for responses, written out as JSON (awsJson 1.0/1.1) or CBOR (Smithy
//! RPC v2), plus CBOR → JSON for requests. Knows no operation; handlers build `Value`s.

use minicbor::data::{IanaTag, Tag, Type};

/// A response document. `Time` is epoch seconds: a number in JSON, tag 1 + float in CBOR.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Time(f64),
    List(Vec<Value>),
    Map(Vec<(&'static str, Value)>),
    /// A document whose keys are data (e.g. SQS message attribute names).
    Json(serde_json::Value),
}

impl Value {
    pub(crate) fn str(text: impl Into<String>) -> Value {
        Value::Str(text.into())
    }

    pub(crate) fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) | Value::Time(f) => J::from(*f),
            Value::Str(s) => J::String(s.clone()),
            Value::List(items) => J::Array(items.iter().map(Value::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(key, value)| ((*key).to_owned(), value.to_json()))
                    .collect(),
            ),
            Value::Json(json) => json.clone(),
        }
    }

    pub(crate) fn to_cbor(&self) -> Vec<u8> {
        let mut encoder = minicbor::Encoder::new(Vec::new());
        self.encode_into(&mut encoder);
        encoder.into_writer()
    }

    fn encode_into(&self, encoder: &mut minicbor::Encoder<Vec<u8>>) {
        // Writing into a Vec cannot fail: minicbor's Vec writer error type is Infallible.
        const INFALLIBLE: &str = "writing CBOR into a Vec cannot fail";
        match self {
            Value::Bool(b) => {
                encoder.bool(*b).expect(INFALLIBLE);
            }
            Value::Int(i) => {
                encoder.i64(*i).expect(INFALLIBLE);
            }
            Value::Float(f) => {
                encoder.f64(*f).expect(INFALLIBLE);
            }
            Value::Str(s) => {
                encoder.str(s).expect(INFALLIBLE);
            }
            Value::Time(seconds) => {
                encoder
                    .tag(Tag::from(IanaTag::Timestamp))
                    .expect(INFALLIBLE)
                    .f64(*seconds)
                    .expect(INFALLIBLE);
            }
            Value::List(items) => {
                encoder.array(items.len() as u64).expect(INFALLIBLE);
                for item in items {
                    item.encode_into(encoder);
                }
            }
            Value::Map(entries) => {
                encoder.map(entries.len() as u64).expect(INFALLIBLE);
                for (key, value) in entries {
                    encoder.str(key).expect(INFALLIBLE);
                    value.encode_into(encoder);
                }
            }
            Value::Json(json) => encode_json(json, encoder),
        }
    }
}

/// A JSON document written as CBOR (objects as maps with text keys).
fn encode_json(json: &serde_json::Value, encoder: &mut minicbor::Encoder<Vec<u8>>) {
    use serde_json::Value as J;
    const INFALLIBLE: &str = "writing CBOR into a Vec cannot fail";
    match json {
        J::Null => {
            encoder.null().expect(INFALLIBLE);
        }
        J::Bool(b) => {
            encoder.bool(*b).expect(INFALLIBLE);
        }
        J::Number(n) => match n.as_i64() {
            Some(i) => {
                encoder.i64(i).expect(INFALLIBLE);
            }
            None => {
                encoder.f64(n.as_f64().unwrap_or(0.0)).expect(INFALLIBLE);
            }
        },
        J::String(s) => {
            encoder.str(s).expect(INFALLIBLE);
        }
        J::Array(items) => {
            encoder.array(items.len() as u64).expect(INFALLIBLE);
            for item in items {
                encode_json(item, encoder);
            }
        }
        J::Object(map) => {
            encoder.map(map.len() as u64).expect(INFALLIBLE);
            for (key, value) in map {
                encoder.str(key).expect(INFALLIBLE);
                encode_json(value, encoder);
            }
        }
    }
}

/// Maximum nesting accepted in a CBOR request (real inputs nest 3 deep at most).
const MAX_CBOR_DEPTH: u32 = 32;

/// Decode a CBOR request body into JSON so one handler serves both CloudWatch protocols.
/// Tags are dropped (timestamps become numbers), byte strings become base64-free hex strings.
pub(crate) fn cbor_to_json(bytes: &[u8]) -> Result<serde_json::Value, String> {
    if bytes.is_empty() {
        return Ok(serde_json::Value::Object(Default::default()));
    }
    let mut decoder = minicbor::Decoder::new(bytes);
    let value = decode(&mut decoder, 0)?;
    if decoder.position() != bytes.len() {
        return Err("trailing bytes after the CBOR document".to_owned());
    }
    Ok(value)
}

fn decode(d: &mut minicbor::Decoder<'_>, depth: u32) -> Result<serde_json::Value, String> {
    use serde_json::Value as J;
    if depth > MAX_CBOR_DEPTH {
        return Err("CBOR document nests too deep".to_owned());
    }
    let err = |e: minicbor::decode::Error| e.to_string();
    let kind = d.datatype().map_err(err)?;
    Ok(match kind {
        Type::Bool => J::Bool(d.bool().map_err(err)?),
        Type::Null => {
            d.null().map_err(err)?;
            J::Null
        }
        Type::Undefined => {
            d.undefined().map_err(err)?;
            J::Null
        }
        Type::U8 | Type::U16 | Type::U32 | Type::U64 => J::from(d.u64().map_err(err)?),
        Type::I8 | Type::I16 | Type::I32 | Type::I64 | Type::Int => J::from(d.i64().map_err(err)?),
        Type::F16 | Type::F32 | Type::F64 => J::from(d.f64().map_err(err)?),
        Type::Bytes => J::String(hex::encode(d.bytes().map_err(err)?)),
        Type::BytesIndef => {
            let mut all = Vec::new();
            for chunk in d.bytes_iter().map_err(err)? {
                all.extend_from_slice(chunk.map_err(err)?);
            }
            J::String(hex::encode(all))
        }
        Type::String => J::String(d.str().map_err(err)?.to_owned()),
        Type::StringIndef => {
            let mut all = String::new();
            for chunk in d.str_iter().map_err(err)? {
                all.push_str(chunk.map_err(err)?);
            }
            J::String(all)
        }
        Type::Array | Type::ArrayIndef => {
            let len = d.array().map_err(err)?;
            let mut items = Vec::new();
            match len {
                Some(n) => {
                    for _ in 0..n {
                        items.push(decode(d, depth + 1)?);
                    }
                }
                None => {
                    while !at_break(d)? {
                        items.push(decode(d, depth + 1)?);
                    }
                }
            }
            J::Array(items)
        }
        Type::Map | Type::MapIndef => {
            let len = d.map().map_err(err)?;
            let mut map = serde_json::Map::new();
            let mut entry = |d: &mut minicbor::Decoder<'_>| -> Result<(), String> {
                let key = match decode(d, depth + 1)? {
                    J::String(key) => key,
                    other => other.to_string(),
                };
                let value = decode(d, depth + 1)?;
                map.insert(key, value);
                Ok(())
            };
            match len {
                Some(n) => {
                    for _ in 0..n {
                        entry(d)?;
                    }
                }
                None => {
                    while !at_break(d)? {
                        entry(d)?;
                    }
                }
            }
            J::Object(map)
        }
        Type::Tag => {
            d.tag().map_err(err)?;
            decode(d, depth + 1)?
        }
        Type::Simple => {
            d.simple().map_err(err)?;
            J::Null
        }
        Type::Break | Type::Unknown(_) => return Err(format!("unexpected CBOR item {kind}")),
    })
}

/// True (and the break consumed) when the next item ends an indefinite-length container.
fn at_break(d: &mut minicbor::Decoder<'_>) -> Result<bool, String> {
    if d.datatype().map_err(|e| e.to_string())? == Type::Break {
        // A break is the single byte 0xff.
        d.set_position(d.position() + 1);
        Ok(true)
    } else {
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cbor_round_trips_through_json() {
        let value = Value::Map(vec![
            ("Name", Value::str("a")),
            ("Count", Value::Int(-3)),
            ("When", Value::Time(1.5)),
            (
                "List",
                Value::List(vec![Value::Bool(true), Value::Float(2.25)]),
            ),
        ]);
        let json = cbor_to_json(&value.to_cbor()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"Name":"a","Count":-3,"When":1.5,"List":[true,2.25]})
        );
    }

    #[test]
    fn indefinite_maps_and_arrays_decode() {
        // {_ "AlarmNames": [_ "x"] }
        let mut bytes = vec![0xbf, 0x6a];
        bytes.extend_from_slice(b"AlarmNames");
        bytes.extend_from_slice(&[0x9f, 0x61, b'x', 0xff, 0xff]);
        let json = cbor_to_json(&bytes).unwrap();
        assert_eq!(json, serde_json::json!({"AlarmNames": ["x"]}));
    }

    #[test]
    fn truncated_cbor_is_an_error() {
        assert!(cbor_to_json(&[0xbf, 0x6a, b'A']).is_err());
    }
}
