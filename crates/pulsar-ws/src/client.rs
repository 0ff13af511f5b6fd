//! A [`Client`] that owns named producers, consumers and readers and finds them by
//! Stargate's registry keys, plus ad-hoc produce by URL ([`produce`]).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::conn::ClientConfig;
use crate::consumer::{
    Consumer, ConsumerHandle, ConsumerOptions, Reader, ReaderHandle, ReaderOptions,
};
use crate::error::Error;
use crate::producer::{Producer, ProducerOptions};
use crate::proto::{MessageId, OutgoingMessage};
use crate::topic::{Domain, Topic};

/// What a registry entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Component {
    /// A producer.
    Producer,
    /// A consumer.
    Consumer,
    /// A reader.
    Reader,
}

/// Stargate's registry key: `(component, persistence, tenant, namespace, topic)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RegistryKey {
    /// What it is.
    pub component: Component,
    /// Persistent or not.
    pub persistence: Domain,
    /// Tenant.
    pub tenant: String,
    /// Namespace.
    pub namespace: String,
    /// Topic name.
    pub topic: String,
}

impl RegistryKey {
    /// The key of `component` on `topic`.
    pub fn new(component: Component, topic: &Topic) -> Self {
        Self {
            component,
            persistence: topic.domain(),
            tenant: topic.tenant().to_owned(),
            namespace: topic.namespace().to_owned(),
            topic: topic.name().to_owned(),
        }
    }
}

#[derive(Default)]
struct Registry {
    producers: HashMap<RegistryKey, Producer>,
    receivers: HashMap<RegistryKey, ConsumerHandle>,
    readers: HashMap<RegistryKey, ReaderHandle>,
}

/// Owns the producers, consumers and readers it created and finds them again by topic.
///
/// ```no_run
/// # async fn demo() -> Result<(), headwaters_pulsar_ws::Error> {
/// use headwaters_pulsar_ws::{Client, ClientConfig, Component, ProducerOptions, Topic};
/// let client = Client::new(ClientConfig::new("ws://127.0.0.1:8080")?);
/// let topic = Topic::persistent("public", "default", "orders")?;
/// client.producer(topic.clone(), ProducerOptions::default()).await?;
/// // …elsewhere:
/// let producer = client.find_producer(&topic).expect("registered");
/// producer.send("hello").await?;
/// client.close().await;
/// # Ok(()) }
/// ```
pub struct Client {
    config: ClientConfig,
    registry: Mutex<Registry>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client with no connections yet.
    pub fn new(config: ClientConfig) -> Self {
        Self {
            config,
            registry: Mutex::new(Registry::default()),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The topic's producer: the registered one, or a new one (connected now).
    pub async fn producer(
        &self,
        topic: Topic,
        options: ProducerOptions,
    ) -> Result<Producer, Error> {
        let key = RegistryKey::new(Component::Producer, &topic);
        if let Some(p) = self.registry().producers.get(&key) {
            return Ok(p.clone());
        }
        let p = Producer::connect(&self.config, topic, options).await?;
        Ok(self.registry().producers.entry(key).or_insert(p).clone())
    }

    /// Subscribe and register the consumer's handle (replacing an earlier one).
    pub async fn consumer(
        &self,
        topic: Topic,
        subscription: &str,
        options: ConsumerOptions,
    ) -> Result<Consumer, Error> {
        let key = RegistryKey::new(Component::Consumer, &topic);
        let c = Consumer::subscribe(&self.config, topic, subscription, options).await?;
        self.registry().receivers.insert(key, c.handle());
        Ok(c)
    }

    /// Open and register a reader.
    pub async fn reader(&self, topic: Topic, options: ReaderOptions) -> Result<Reader, Error> {
        let key = RegistryKey::new(Component::Reader, &topic);
        let r = Reader::open(&self.config, topic, options).await?;
        self.registry().readers.insert(key, r.handle());
        Ok(r)
    }

    /// The registered producer of `topic`.
    pub fn find_producer(&self, topic: &Topic) -> Option<Producer> {
        self.find_producer_by_key(&RegistryKey::new(Component::Producer, topic))
    }

    /// A registered producer by key.
    pub fn find_producer_by_key(&self, key: &RegistryKey) -> Option<Producer> {
        self.registry().producers.get(key).cloned()
    }

    /// The registered consumer's handle by key.
    pub fn find_receiver(&self, key: &RegistryKey) -> Option<ConsumerHandle> {
        self.registry().receivers.get(key).cloned()
    }

    /// The registered reader of `topic`.
    pub fn find_reader(&self, topic: &Topic) -> Option<ReaderHandle> {
        self.registry()
            .readers
            .get(&RegistryKey::new(Component::Reader, topic))
            .cloned()
    }

    /// Every registry key.
    pub fn keys(&self) -> Vec<RegistryKey> {
        let r = self.registry();
        r.producers
            .keys()
            .chain(r.receivers.keys())
            .chain(r.readers.keys())
            .cloned()
            .collect()
    }

    /// Close everything registered (producers wait for their pending receipts).
    pub async fn close(&self) {
        let (producers, receivers, readers) = {
            let mut r = self.registry();
            (
                std::mem::take(&mut r.producers),
                std::mem::take(&mut r.receivers),
                std::mem::take(&mut r.readers),
            )
        };
        for p in producers.into_values() {
            p.close().await;
        }
        for c in receivers.into_values() {
            c.close().await;
        }
        for r in readers.into_values() {
            r.close().await;
        }
    }
}

/// Ad-hoc produce, like `Stargate.produce/2`: open a producer on
/// `ws[s]://host:port/ws/v2/producer/{persistence}/{tenant}/{namespace}/{topic}[?params]`,
/// send every message pipelined, wait for all receipts, close. The ids come back in order.
/// Query parameters in the URL are passed through as given.
pub async fn produce<M>(
    url: &str,
    messages: impl IntoIterator<Item = M>,
) -> Result<Vec<MessageId>, Error>
where
    M: Into<OutgoingMessage>,
{
    let (base, path, query) = split_producer_url(url)?;
    let config = ClientConfig::new(&base)?;
    produce_with(&config, path, query, messages).await
}

/// [`produce`] with a configuration (token, TLS) of your own.
pub async fn produce_with<M>(
    config: &ClientConfig,
    topic: Topic,
    query: String,
    messages: impl IntoIterator<Item = M>,
) -> Result<Vec<MessageId>, Error>
where
    M: Into<OutgoingMessage>,
{
    let producer = Producer::open(config, topic, query, ProducerOptions::default()).await?;
    let mut receipts = Vec::new();
    for m in messages {
        receipts.push(producer.enqueue(m).await?);
    }
    let mut ids = Vec::with_capacity(receipts.len());
    let mut first_error = None;
    for r in receipts {
        match r.await {
            Ok(id) => ids.push(id),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    producer.close().await;
    first_error.map_or(Ok(ids), Err)
}

fn split_producer_url(url: &str) -> Result<(String, Topic, String), Error> {
    let bad = |why: &str| Error::Config(format!("{url:?}: {why}"));
    let scheme_end = url.find("://").ok_or_else(|| bad("no scheme"))? + 3;
    let path_start = url[scheme_end..]
        .find('/')
        .map(|i| i + scheme_end)
        .ok_or_else(|| bad("no path"))?;
    let (base, rest) = url.split_at(path_start);
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let parts: Vec<&str> = path.split('/').collect();
    let [
        "",
        "ws",
        "v2",
        "producer",
        domain,
        tenant,
        namespace,
        topic @ ..,
    ] = parts.as_slice()
    else {
        return Err(bad(
            "expected /ws/v2/producer/{persistence}/{tenant}/{namespace}/{topic}",
        ));
    };
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| bad("a path segment is not UTF-8"))
    };
    let domain = match *domain {
        "persistent" => Domain::Persistent,
        "non-persistent" => Domain::NonPersistent,
        _ => return Err(bad("persistence must be persistent or non-persistent")),
    };
    let name = topic
        .iter()
        .map(|s| decode(s))
        .collect::<Result<Vec<_>, _>>()?
        .join("/");
    let topic = Topic::new(domain, &decode(tenant)?, &decode(namespace)?, &name)?;
    Ok((base.to_owned(), topic, query.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producer_urls_split_into_server_topic_and_query() {
        let (base, topic, query) = split_producer_url(
            "ws://127.0.0.1:8080/ws/v2/producer/persistent/public/default/my%20topic?producerName=p",
        )
        .unwrap();
        assert_eq!(base, "ws://127.0.0.1:8080");
        assert_eq!(topic.to_string(), "persistent://public/default/my topic");
        assert_eq!(query, "producerName=p");
        assert!(split_producer_url("ws://h:1/ws/v2/consumer/persistent/a/b/c/s").is_err());
        assert!(split_producer_url("ws://h:1").is_err());
    }
}
