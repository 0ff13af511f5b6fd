//! The PostgreSQL store against a real server (`DATABASE_URL`, set by `cargo xtask integration`).

use std::time::Duration;

use headwaters_process_status::{
    Error, PostgresStore, ProcessStatus, SqlState, StatusStore, Timestamp, WriteBehind,
};

fn database_url() -> String {
    std::env::var("DATABASE_URL").expect(
        "DATABASE_URL is not set: run `cargo xtask integration`, which starts PostgreSQL, or set DATABASE_URL",
    )
}

#[tokio::test]
#[ignore = "needs PostgreSQL: cargo xtask integration"]
async fn postgres_round_trip_never_backwards() {
    let store = PostgresStore::connect_with(&database_url(), "hw_it_round_trip")
        .await
        .unwrap();
    store.reset().await.unwrap();
    let status = ProcessStatus::open(store, WriteBehind::default())
        .await
        .unwrap();
    for i in 0..5_000 {
        status
            .item_processed(&format!("e{}", i % 100), Timestamp::from_micros(i))
            .await
            .unwrap();
    }
    status
        .item_processed("e0", Timestamp::from_micros(3))
        .await
        .unwrap();
    status.close().await.unwrap();
    let store = PostgresStore::connect_with(&database_url(), "hw_it_round_trip")
        .await
        .unwrap();
    let mut items = store.load().await.unwrap();
    items.sort();
    assert_eq!(items.len(), 100);
    assert_eq!(items[0], ("e0".to_owned(), Timestamp::from_micros(4_900)));
    // An older timestamp written straight to the store does not move it back either.
    store
        .item_processed("e0", Timestamp::from_micros(1))
        .await
        .unwrap();
    let again = ProcessStatus::open(store, WriteBehind::default())
        .await
        .unwrap();
    assert_eq!(
        again.last_processed("e0"),
        Some(Timestamp::from_micros(4_900))
    );
}

#[tokio::test]
#[ignore = "needs PostgreSQL: cargo xtask integration"]
async fn postgres_reset_touches_only_its_table() {
    let a = PostgresStore::connect_with(&database_url(), "hw_it_reset_a")
        .await
        .unwrap();
    let b = PostgresStore::connect_with(&database_url(), "hw_it_reset_b")
        .await
        .unwrap();
    a.item_processed("x", Timestamp::from_micros(1))
        .await
        .unwrap();
    b.item_processed("x", Timestamp::from_micros(1))
        .await
        .unwrap();
    a.reset().await.unwrap();
    assert!(a.load().await.unwrap().is_empty());
    assert_eq!(b.load().await.unwrap().len(), 1);
    b.reset().await.unwrap();
}

#[tokio::test]
#[ignore = "needs PostgreSQL: cargo xtask integration"]
async fn postgres_bad_input_is_typed() {
    let bad_url = PostgresStore::connect("postgres://user:secret@127.0.0.1:notaport/db").await;
    let err = bad_url.unwrap_err();
    assert!(matches!(err, Error::InvalidUrl { .. }), "{err:?}");
    assert!(
        !err.to_string().contains("secret"),
        "no password in errors: {err}"
    );

    // A port nobody listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let unreachable = tokio::time::timeout(
        Duration::from_secs(20),
        PostgresStore::connect(&format!("postgres://user:secret@127.0.0.1:{port}/db")),
    )
    .await
    .unwrap();
    let err = unreachable.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains(&format!("127.0.0.1:{port}")));
    assert!(!err.to_string().contains("secret"));

    // A user without privileges on an existing table.
    let admin = PostgresStore::connect_with(&database_url(), "hw_it_locked")
        .await
        .unwrap();
    drop(admin);
    let (client, conn) = tokio_postgres_connect(&database_url()).await;
    client
        .batch_execute(
            "DO $$ BEGIN
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'hw_reader') THEN
                 CREATE ROLE hw_reader LOGIN PASSWORD 'hw_reader';
               END IF;
             END $$;
             REVOKE ALL ON hw_it_locked FROM hw_reader;",
        )
        .await
        .unwrap();
    drop(client);
    conn.abort();
    let url = reader_url(&database_url());
    let err = PostgresStore::connect_with(&url, "hw_it_locked")
        .await
        .map(drop);
    let err = match err {
        // CREATE TABLE IF NOT EXISTS passes on an existing table; the write is refused.
        Ok(()) => {
            let store = PostgresStore::connect_with(&url, "hw_it_locked")
                .await
                .unwrap();
            store
                .item_processed("x", Timestamp::from_micros(1))
                .await
                .unwrap_err()
        }
        Err(e) => e,
    };
    match &err {
        Error::Postgres { code, .. } => {
            assert_eq!(*code, SqlState::INSUFFICIENT_PRIVILEGE, "{err}");
        }
        other => panic!("expected a permission error, got {other:?}"),
    }
    assert!(
        err.to_string().contains("GRANT"),
        "the error says what to do: {err}"
    );
}

async fn tokio_postgres_connect(
    url: &str,
) -> (tokio_postgres::Client, tokio::task::JoinHandle<()>) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    (client, task)
}

/// The same server and database as `url`, as the unprivileged `hw_reader`.
fn reader_url(url: &str) -> String {
    let rest = url.split_once('@').map_or(url, |(_, r)| r);
    format!("postgres://hw_reader:hw_reader@{rest}")
}

/// `DATABASE_URL` with these libpq parameters added.
fn url_with(params: &str) -> String {
    let url = database_url();
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{params}")
}

/// The CA of the throwaway server `cargo xtask integration` starts with TLS on.
fn server_ca() -> String {
    std::env::var("HEADWATERS_PG_CA").expect(
        "HEADWATERS_PG_CA is not set: the TLS tests need the CA of a server with ssl=on, which `cargo xtask integration` starts",
    )
}

/// Whether the connection `url` makes is encrypted, as the server sees it.
async fn encrypted(url: &str) -> Result<bool, headwaters_ordering_core::pg::PgError> {
    let pg = headwaters_ordering_core::pg::PgConnection::new(url)?;
    let client = pg.client().await?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    Ok(row.get(0))
}

#[tokio::test]
#[ignore = "needs PostgreSQL with TLS: cargo xtask integration"]
async fn pg_tls_follows_the_urls_sslmode_as_libpq_does() {
    let ca = server_ca();
    for (params, tls) in [
        ("sslmode=disable".to_owned(), false),
        ("sslmode=prefer".to_owned(), true),
        ("sslmode=require".to_owned(), true),
        (format!("sslmode=verify-ca&sslrootcert={ca}"), true),
        (format!("sslmode=verify-full&sslrootcert={ca}"), true),
    ] {
        assert_eq!(
            encrypted(&url_with(&params)).await.unwrap(),
            tls,
            "{params}"
        );
    }
    assert!(
        encrypted(&database_url()).await.unwrap(),
        "the default (prefer) encrypts when the server offers TLS"
    );
    // The store itself, over a verified connection.
    let url = url_with(&format!("sslmode=verify-full&sslrootcert={ca}"));
    let store = PostgresStore::connect_with(&url, "hw_it_tls")
        .await
        .unwrap();
    store.reset().await.unwrap();
    store
        .item_processed("tls", Timestamp::from_micros(7))
        .await
        .unwrap();
    assert_eq!(
        store.load().await.unwrap(),
        [("tls".to_owned(), Timestamp::from_micros(7))]
    );
}

#[tokio::test]
#[ignore = "needs PostgreSQL with TLS: cargo xtask integration"]
async fn pg_tls_refuses_a_server_certificate_its_ca_did_not_sign() {
    let other = rcgen::generate_simple_self_signed(vec!["other-ca".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other-ca.pem");
    std::fs::write(&path, other.cert.pem()).unwrap();
    for mode in ["verify-ca", "verify-full", "require"] {
        let url = url_with(&format!("sslmode={mode}&sslrootcert={}", path.display()));
        let err = encrypted(&url).await.unwrap_err();
        assert!(
            matches!(err, headwaters_ordering_core::pg::PgError::Connect { .. }),
            "{mode}: {err}"
        );
        assert!(err.to_string().contains("certificate"), "{mode}: {err}");
        let store = PostgresStore::connect(&url).await.unwrap_err();
        assert!(matches!(store, Error::Connect { .. }), "{store}");
    }
}
