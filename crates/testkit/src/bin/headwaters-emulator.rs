//! Run an emulator standalone: `headwaters-emulator pulsar --listen 127.0.0.1:8080 [--token T]`,
//! `headwaters-emulator eventstore --listen 127.0.0.1:1113`, or a simulated three-node
//! EventStore cluster on free ports: `headwaters-emulator eventstore-cluster [--gossip v20|v5]`.

use std::net::SocketAddr;
use std::process::ExitCode;

const USAGE: &str = "usage: headwaters-emulator pulsar [--listen 127.0.0.1:8080] [--token TOKEN]\n       headwaters-emulator eventstore [--listen 127.0.0.1:1113]\n       headwaters-emulator eventstore-cluster [--gossip v20|v5]";

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("headwaters-emulator: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: &[String]) -> Result<(), String> {
    let Some((which, rest)) = args.split_first() else {
        return Err("which emulator?".into());
    };
    // The real servers' ports: Pulsar's web service 8080, EventStore's TCP API 1113.
    let default = if which == "eventstore" {
        "127.0.0.1:1113"
    } else {
        "127.0.0.1:8080"
    };
    let mut listen: SocketAddr = default.parse().expect("default address");
    let mut token = None;
    let mut gossip = None;
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => {
                listen = value
                    .parse()
                    .map_err(|e| format!("--listen {value}: {e}"))?;
            }
            "--token" => token = Some(value.clone()),
            "--gossip" => gossip = Some(value.clone()),
            other => return Err(format!("unknown option {other}")),
        }
    }
    match which.as_str() {
        #[cfg(feature = "pulsar")]
        "pulsar" => {
            use headwaters_testkit::pulsar::{EmulatorConfig, PulsarEmulator};
            let mut config = EmulatorConfig::default();
            if let Some(t) = token {
                config = config.with_token(t);
            }
            let emulator = PulsarEmulator::start_with(config, listen)
                .await
                .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
            // Scripts wait for this line.
            println!("pulsar emulator listening on {}", emulator.url());
            tokio::select! {
                () = emulator.serve_forever() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            Ok(())
        }
        #[cfg(feature = "eventstore")]
        "eventstore" => {
            use headwaters_testkit::eventstore::{EventStoreConfig, EventStoreEmulator};
            if token.is_some() {
                return Err(
                    "--token is for the pulsar emulator (EventStore uses admin / changeit)".into(),
                );
            }
            let emulator = EventStoreEmulator::start_with(EventStoreConfig::default(), listen)
                .await
                .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
            // Scripts wait for this line.
            println!("eventstore emulator listening on tcp://{}", emulator.addr());
            tokio::select! {
                () = emulator.serve_forever() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            Ok(())
        }
        #[cfg(feature = "eventstore")]
        "eventstore-cluster" => {
            use headwaters_testkit::eventstore::{
                EventStoreCluster, EventStoreConfig, GossipFormat,
            };
            let format = match gossip.as_deref() {
                None | Some("v20") => GossipFormat::V20,
                Some("v5") => GossipFormat::V5,
                Some(other) => return Err(format!("--gossip {other}: v20 or v5")),
            };
            let cluster = EventStoreCluster::start(EventStoreConfig::default(), format)
                .await
                .map_err(|e| format!("cannot start the cluster: {e}"))?;
            let seeds: Vec<String> = (0..3)
                .map(|i| format!("http://{}", cluster.gossip_addr(i)))
                .collect();
            // Scripts wait for this line (the seeds are its last word).
            println!(
                "eventstore cluster (leader: node 0) gossip seeds {}",
                seeds.join(",")
            );
            for (i, seed) in seeds.iter().enumerate() {
                eprintln!("node {i}: tcp://{} gossip {seed}", cluster.node(i).addr());
            }
            tokio::select! {
                () = cluster.node(0).serve_forever() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            Ok(())
        }
        other => Err(format!(
            "unknown emulator {other:?} (pulsar, eventstore or eventstore-cluster)"
        )),
    }
}
