//! Typed stream metadata — [`StreamMetadata`], [`StreamAcl`]: the `$metadata` event of the
//! stream's metadata stream (`$$stream`), with the servers' keys (`$maxAge`, `$maxCount`,
//! `$tb`, `$cacheControl`, `$acl`) and any custom ones.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::connection::Connection;
use crate::error::Error;
use crate::ops::EventRead;
use crate::types::{EventData, ExpectedVersion, Links, StreamPosition, WriteResult};

/// Who may do what with a stream (`$acl`): user or role names per right.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamAcl {
    /// `$r`: read.
    pub read: Vec<String>,
    /// `$w`: write.
    pub write: Vec<String>,
    /// `$d`: delete.
    pub delete: Vec<String>,
    /// `$mr`: read the metadata.
    pub meta_read: Vec<String>,
    /// `$mw`: write the metadata.
    pub meta_write: Vec<String>,
}

const ACL_KEYS: [&str; 5] = ["$r", "$w", "$d", "$mr", "$mw"];

impl StreamAcl {
    fn rights(&self) -> [&Vec<String>; 5] {
        [
            &self.read,
            &self.write,
            &self.delete,
            &self.meta_read,
            &self.meta_write,
        ]
    }

    fn rights_mut(&mut self) -> [&mut Vec<String>; 5] {
        [
            &mut self.read,
            &mut self.write,
            &mut self.delete,
            &mut self.meta_read,
            &mut self.meta_write,
        ]
    }
}

/// A stream's metadata.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct StreamMetadata {
    /// `$maxCount`: keep only the newest so many events.
    pub max_count: Option<u64>,
    /// `$maxAge`: events older than this are gone (whole seconds).
    pub max_age: Option<Duration>,
    /// `$tb`: events numbered below this are gone (a soft delete sets it).
    pub truncate_before: Option<u64>,
    /// `$cacheControl`: HTTP cache lifetime of the stream's pages (whole seconds).
    pub cache_control: Option<Duration>,
    /// `$acl`.
    pub acl: Option<StreamAcl>,
    /// Every other key, as written.
    pub custom: Map<String, Value>,
}

impl StreamMetadata {
    /// Keep only the newest `n` events.
    pub fn with_max_count(mut self, n: u64) -> Self {
        self.max_count = Some(n);
        self
    }

    /// Drop events older than `age` (whole seconds).
    pub fn with_max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }

    /// Drop events numbered below `n`.
    pub fn with_truncate_before(mut self, n: u64) -> Self {
        self.truncate_before = Some(n);
        self
    }

    /// HTTP cache lifetime (whole seconds).
    pub fn with_cache_control(mut self, lifetime: Duration) -> Self {
        self.cache_control = Some(lifetime);
        self
    }

    /// Access control.
    pub fn with_acl(mut self, acl: StreamAcl) -> Self {
        self.acl = Some(acl);
        self
    }

    /// A custom key (the `$` prefix is the server's).
    pub fn with_custom(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.custom.insert(key.into(), value.into());
        self
    }

    /// The JSON document the servers store.
    pub fn to_json(&self) -> Value {
        let mut out = self.custom.clone();
        if let Some(n) = self.max_count {
            out.insert("$maxCount".into(), n.into());
        }
        if let Some(age) = self.max_age {
            out.insert("$maxAge".into(), age.as_secs().into());
        }
        if let Some(n) = self.truncate_before {
            out.insert("$tb".into(), n.into());
        }
        if let Some(c) = self.cache_control {
            out.insert("$cacheControl".into(), c.as_secs().into());
        }
        if let Some(acl) = &self.acl {
            let mut rights = Map::new();
            for (key, who) in ACL_KEYS.iter().zip(acl.rights()) {
                // One name is written as a string, several as an array (as .NET does).
                match who.as_slice() {
                    [] => {}
                    [one] => {
                        rights.insert((*key).into(), one.clone().into());
                    }
                    many => {
                        rights.insert((*key).into(), many.to_vec().into());
                    }
                }
            }
            out.insert("$acl".into(), Value::Object(rights));
        }
        Value::Object(out)
    }

    /// Parse a stored document; a known key with the wrong type is an error naming it.
    pub fn from_json(bytes: &[u8]) -> Result<Self, Error> {
        let bad = |key: &str, what: &str| Error::Decode(format!("stream metadata {key}: {what}"));
        let Value::Object(mut doc) = serde_json::from_slice::<Value>(bytes)
            .map_err(|e| Error::Decode(format!("stream metadata is not JSON: {e}")))?
        else {
            return Err(bad("document", "not a JSON object"));
        };
        let mut count = |key: &str| -> Result<Option<u64>, Error> {
            doc.remove(key)
                .map(|v| {
                    v.as_u64()
                        .ok_or_else(|| bad(key, "not a non-negative integer"))
                })
                .transpose()
        };
        let max_count = count("$maxCount")?;
        let max_age = count("$maxAge")?.map(Duration::from_secs);
        let truncate_before = count("$tb")?;
        let cache_control = count("$cacheControl")?.map(Duration::from_secs);
        let acl = match doc.remove("$acl") {
            None => None,
            Some(Value::Object(rights)) => {
                let mut acl = StreamAcl::default();
                for (key, slot) in ACL_KEYS.iter().zip(acl.rights_mut()) {
                    *slot = match rights.get(*key) {
                        None | Some(Value::Null) => Vec::new(),
                        Some(Value::String(one)) => vec![one.clone()],
                        Some(Value::Array(many)) => many
                            .iter()
                            .map(|v| {
                                v.as_str()
                                    .map(str::to_owned)
                                    .ok_or_else(|| bad(key, "not a name"))
                            })
                            .collect::<Result<_, _>>()?,
                        Some(_) => return Err(bad(key, "not a name or a list of names")),
                    };
                }
                Some(acl)
            }
            Some(_) => return Err(bad("$acl", "not an object")),
        };
        Ok(Self {
            max_count,
            max_age,
            truncate_before,
            cache_control,
            acl,
            custom: doc,
        })
    }
}

/// What [`Connection::get_stream_metadata`] found.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct StreamMetadataResult {
    /// The stream.
    pub stream: String,
    /// Whether the stream was hard-deleted.
    pub is_deleted: bool,
    /// The metadata stream's version (`None`: never set) — the expected version for the
    /// next [`Connection::set_stream_metadata`].
    pub meta_version: Option<u64>,
    /// The metadata (empty when never set).
    pub metadata: StreamMetadata,
}

/// The metadata stream of `stream`.
pub fn metadata_stream(stream: &str) -> String {
    format!("$${stream}")
}

impl Connection {
    /// Write a stream's metadata; `expected` is checked against the metadata stream.
    pub async fn set_stream_metadata(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        metadata: &StreamMetadata,
    ) -> Result<WriteResult, Error> {
        let event = EventData::json("$metadata", metadata.to_json().to_string());
        self.append_to_stream(&metadata_stream(stream), expected, &[event])
            .await
    }

    /// Read a stream's metadata.
    pub async fn get_stream_metadata(&self, stream: &str) -> Result<StreamMetadataResult, Error> {
        let result = |is_deleted, meta_version, metadata| StreamMetadataResult {
            stream: stream.to_owned(),
            is_deleted,
            meta_version,
            metadata,
        };
        match self
            .read_event(
                &metadata_stream(stream),
                StreamPosition::End,
                Links::AsStored,
            )
            .await?
        {
            EventRead::Found(e) => {
                let record = e
                    .original()
                    .ok_or_else(|| Error::Decode("a metadata event without a record".into()))?;
                Ok(result(
                    false,
                    Some(record.event_number),
                    StreamMetadata::from_json(&record.data)?,
                ))
            }
            EventRead::NotFound | EventRead::NoStream => {
                Ok(result(false, None, StreamMetadata::default()))
            }
            EventRead::Deleted => Ok(result(true, None, StreamMetadata::default())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_keys_are_typed_and_custom_keys_kept() {
        let meta = StreamMetadata::default()
            .with_max_count(10)
            .with_max_age(Duration::from_secs(3600))
            .with_truncate_before(4)
            .with_cache_control(Duration::from_secs(60))
            .with_acl(StreamAcl {
                read: vec!["$all".into()],
                write: vec!["ops".into(), "admin".into()],
                ..StreamAcl::default()
            })
            .with_custom("owner", "billing");
        let json = meta.to_json();
        assert_eq!(json["$maxCount"], 10);
        assert_eq!(json["$maxAge"], 3600);
        assert_eq!(json["$tb"], 4);
        assert_eq!(json["$cacheControl"], 60);
        assert_eq!(json["$acl"]["$r"], "$all", "one name is a string");
        assert_eq!(json["$acl"]["$w"], serde_json::json!(["ops", "admin"]));
        assert!(json["$acl"].get("$d").is_none());
        assert_eq!(json["owner"], "billing");
        let back = StreamMetadata::from_json(json.to_string().as_bytes()).unwrap();
        assert_eq!(back, meta);
    }

    #[test]
    fn wrong_types_name_the_key() {
        let err = StreamMetadata::from_json(br#"{"$maxCount": "ten"}"#).unwrap_err();
        assert!(err.to_string().contains("$maxCount"), "{err}");
        let err = StreamMetadata::from_json(br#"{"$acl": {"$r": 3}}"#).unwrap_err();
        assert!(err.to_string().contains("$r"), "{err}");
        assert!(StreamMetadata::from_json(b"[]").is_err());
        assert!(StreamMetadata::from_json(b"{").is_err());
        assert_eq!(
            StreamMetadata::from_json(b"{}").unwrap(),
            StreamMetadata::default()
        );
    }
}
