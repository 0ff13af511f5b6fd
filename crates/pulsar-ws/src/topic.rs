//! The topic model and the v2 endpoint paths: [`Topic`], [`Domain`].

use std::fmt;
use std::str::FromStr;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::ParamError;

/// Bytes a path segment or query value keeps as they are (RFC 3986 unreserved); everything
/// else is percent-encoded (the server URL-decodes segments and values).
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

pub(crate) fn encode(text: &str) -> String {
    utf8_percent_encode(text, UNRESERVED).to_string()
}

/// Whether the topic's messages are persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Domain {
    /// `persistent`
    Persistent,
    /// `non-persistent`
    NonPersistent,
}

impl Domain {
    /// The path and URL spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Persistent => "persistent",
            Self::NonPersistent => "non-persistent",
        }
    }
}

/// A topic: domain, tenant, namespace and name (`persistent://tenant/namespace/name`).
///
/// ```
/// use headwaters_pulsar_ws::Topic;
/// let t: Topic = "persistent://public/default/orders eu".parse().unwrap();
/// assert_eq!(t.producer_path(), "/ws/v2/producer/persistent/public/default/orders%20eu");
/// assert_eq!(t.consumer_path("billing").unwrap(), "/ws/v2/consumer/persistent/public/default/orders%20eu/billing");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Topic {
    domain: Domain,
    tenant: String,
    namespace: String,
    name: String,
}

impl Topic {
    /// A topic from its parts. Parts must be non-empty and contain no `/` (the consumer path
    /// must split into exactly nine segments on the server).
    pub fn new(
        domain: Domain,
        tenant: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Self, ParamError> {
        for (what, part) in [
            ("tenant", tenant),
            ("namespace", namespace),
            ("topic", name),
        ] {
            check_segment(what, part)?;
        }
        Ok(Self {
            domain,
            tenant: tenant.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    /// A persistent topic.
    pub fn persistent(tenant: &str, namespace: &str, name: &str) -> Result<Self, ParamError> {
        Self::new(Domain::Persistent, tenant, namespace, name)
    }

    /// The domain.
    pub fn domain(&self) -> Domain {
        self.domain
    }

    /// The tenant.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The topic's own name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn tail(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.domain.as_str(),
            encode(&self.tenant),
            encode(&self.namespace),
            encode(&self.name)
        )
    }

    /// `/ws/v2/producer/{domain}/{tenant}/{namespace}/{topic}`, segments percent-encoded.
    pub fn producer_path(&self) -> String {
        format!("/ws/v2/producer/{}", self.tail())
    }

    /// `/ws/v2/consumer/{domain}/{tenant}/{namespace}/{topic}/{subscription}`.
    pub fn consumer_path(&self, subscription: &str) -> Result<String, ParamError> {
        check_segment("subscription", subscription)?;
        Ok(format!(
            "/ws/v2/consumer/{}/{}",
            self.tail(),
            encode(subscription)
        ))
    }

    /// `/ws/v2/reader/{domain}/{tenant}/{namespace}/{topic}`.
    pub fn reader_path(&self) -> String {
        format!("/ws/v2/reader/{}", self.tail())
    }

    /// The default dead-letter topic of `subscription`: `{topic}-{subscription}-DLQ`.
    pub fn dead_letter_topic(&self, subscription: &str) -> Self {
        Self {
            name: format!("{}-{subscription}-DLQ", self.name),
            ..self.clone()
        }
    }
}

fn check_segment(what: &'static str, part: &str) -> Result<(), ParamError> {
    if part.is_empty() {
        return Err(ParamError::Invalid {
            name: what,
            reason: "must not be empty".into(),
        });
    }
    if part.contains('/') {
        return Err(ParamError::Invalid {
            name: what,
            reason: format!("{part:?} contains '/', which the WebSocket API cannot route"),
        });
    }
    Ok(())
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}/{}/{}",
            self.domain.as_str(),
            self.tenant,
            self.namespace,
            self.name
        )
    }
}

impl FromStr for Topic {
    type Err = ParamError;

    /// `persistent://tenant/ns/topic` or `non-persistent://…`.
    fn from_str(s: &str) -> Result<Self, ParamError> {
        let bad = |reason: &str| ParamError::Invalid {
            name: "topic",
            reason: format!("{s:?}: {reason}; expected persistent://tenant/namespace/topic"),
        };
        let (domain, rest) = s.split_once("://").ok_or_else(|| bad("no domain"))?;
        let domain = match domain {
            "persistent" => Domain::Persistent,
            "non-persistent" => Domain::NonPersistent,
            _ => return Err(bad("unknown domain")),
        };
        let mut parts = rest.splitn(3, '/');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(t), Some(ns), Some(name)) => Self::new(domain, t, ns, name),
            _ => Err(bad("missing tenant, namespace or topic")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_percent_encode_segments() {
        let t = Topic::new(Domain::NonPersistent, "ten ant", "n?s", "t#1").unwrap();
        assert_eq!(
            t.reader_path(),
            "/ws/v2/reader/non-persistent/ten%20ant/n%3Fs/t%231"
        );
        assert_eq!(t.to_string(), "non-persistent://ten ant/n?s/t#1");
        assert_eq!(t.to_string().parse::<Topic>().unwrap(), t);
    }

    #[test]
    fn bad_topics_say_why() {
        assert!("public/default/t".parse::<Topic>().is_err());
        assert!("kafka://a/b/c".parse::<Topic>().is_err());
        assert!("persistent://a/b".parse::<Topic>().is_err());
        let e = "persistent://a/b/c/d".parse::<Topic>().unwrap_err();
        assert!(e.to_string().contains("'/'"), "{e}");
        let t = Topic::persistent("a", "b", "c").unwrap();
        assert!(t.consumer_path("").is_err());
        assert_eq!(
            t.dead_letter_topic("sub").to_string(),
            "persistent://a/b/c-sub-DLQ"
        );
    }
}
