//! Connecting and declaring the topology once per connection.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::Error;
use crate::config::{AmqpConfig, DeadLetter, target};
use crate::shard::queue_name;

/// Run `step` of establishing a link within [`AmqpConfig::connect_timeout`]: an endpoint
/// that accepts and then says nothing fails the attempt instead of hanging it.
pub(crate) async fn bounded<T>(
    config: &AmqpConfig,
    what: &str,
    step: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(config.connect_timeout, step)
        .await
        .unwrap_or_else(|_| {
            Err(Error::Unreachable {
                target: target(&config.url),
                reason: format!(
                    "{what} did not finish within {:?} (the endpoint accepted the connection but did not answer)",
                    config.connect_timeout
                ),
                source: None,
            })
        })
}

/// Open a connection (TLS per [`AmqpConfig::tls`] for `amqps://`), within the connect
/// timeout.
pub(crate) async fn connect(config: &AmqpConfig) -> Result<Connection, Error> {
    let err = |e: lapin::Error| Error::from_lapin(&e, &target(&config.url));
    let tls = &config.tls;
    let identity = match (&tls.client_cert_pem, &tls.client_key_pem) {
        (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 {
            pem: cert.as_bytes().to_vec(),
            key: key.as_bytes().to_vec(),
        }),
        _ => None,
    };
    let tls = OwnedTLSConfig {
        identity,
        cert_chain: tls.ca_pem.clone(),
    };
    let runtime = lapin::runtime::default_runtime().map_err(err)?;
    let handshake =
        Connection::connect_with_config(&config.url, ConnectionProperties::default(), tls, runtime);
    bounded(config, "the AMQP handshake", async {
        handshake.await.map_err(err)
    })
    .await
}

/// Declare the exchange (if named), the queues of `indices` and their bindings.
pub(crate) async fn declare(
    config: &AmqpConfig,
    channel: &Channel,
    indices: impl Iterator<Item = u32>,
) -> Result<(), Error> {
    let err = |e: lapin::Error| Error::from_lapin(&e, &target(&config.url));
    let durable_exchange = |name: &str, kind: ExchangeKind| {
        channel.exchange_declare(
            name.into(),
            kind,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
    };
    if !config.exchange.is_empty() {
        durable_exchange(&config.exchange, ExchangeKind::Direct)
            .await
            .map_err(err)?;
    }
    if config.dead_letter == DeadLetter::Declared {
        let name = config.declared_dead_letter();
        durable_exchange(&name, ExchangeKind::Fanout)
            .await
            .map_err(err)?;
        channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await
            .map_err(err)?;
        channel
            .queue_bind(
                name.as_str().into(),
                name.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(err)?;
    }
    let args = config.declare_arguments();
    for index in indices {
        let name = queue_name(&config.prefix, index);
        channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions::durable(),
                args.clone(),
            )
            .await
            .map_err(err)?;
        if !config.exchange.is_empty() {
            channel
                .queue_bind(
                    name.as_str().into(),
                    config.exchange.as_str().into(),
                    name.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(err)?;
        }
    }
    Ok(())
}
