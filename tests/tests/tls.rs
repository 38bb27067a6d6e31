//! TLS on TCP against a real daemon: a client that trusts the daemon's CA
//! is served (and still proves its key where client certificates are not
//! required); one that trusts another CA does not connect; a daemon that
//! requires client certificates refuses clients without one or with one
//! another CA signed, and names the others by their certificate in the
//! access table.

use std::path::Path;

use shardd::ctl::certs::{Written, generate};
use shardd_client::tls::TlsOptions;
use shardd_client::{Client, ClientError, ClientOptions, PutOptions, Status};
use shardd_tests::{TestDaemon, engines, http_get, sample};

fn pki(dir: &Path, clients: &[&str]) -> Written {
    let clients: Vec<String> = clients.iter().map(|c| c.to_string()).collect();
    generate(dir, &["127.0.0.1".to_string()], &clients).unwrap()
}

fn tls_config(pki: &Written, client_ca: bool) -> String {
    let mut text = format!(
        "[tls]\nlisten = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\n",
        pki.server.0.display().to_string(),
        pki.server.1.display().to_string()
    );
    if client_ca {
        text.push_str(&format!("client_ca = {:?}\n", pki.ca.display().to_string()));
    }
    text
}

fn trusting(
    ca: &Path,
    client: Option<&(std::path::PathBuf, std::path::PathBuf)>,
    base: ClientOptions,
) -> ClientOptions {
    ClientOptions {
        tls: TlsOptions {
            ca_file: Some(ca.to_path_buf()),
            cert_file: client.map(|c| c.0.clone()),
            key_file: client.map(|c| c.1.clone()),
            server_name: None,
        },
        ..base
    }
}

async fn tls_refusals(daemon: &TestDaemon) -> f64 {
    let (_, text) = http_get(&format!("{}/metrics", daemon.http_url())).await;
    sample(
        &text,
        "shardd_handshake_refusals_total{reason=\"tls\",transport=\"tls\"}",
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_trusts_the_daemons_ca_is_served_and_one_that_does_not_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ours = pki(&dir.path().join("ours"), &[]);
    let theirs = pki(&dir.path().join("theirs"), &[]);
    let mut daemon = TestDaemon::start(engines()[0], &tls_config(&ours, false)).await;
    let endpoint = daemon.tls_endpoint();

    let client = Client::connect_with(&endpoint, trusting(&ours.ca, None, daemon.options()))
        .await
        .unwrap();
    let data = shardd_tests::pattern(3 << 20, 7);
    client
        .put("job", "w", data.clone(), PutOptions::default())
        .await
        .unwrap();
    assert!(client.fetch("job", "w").await.unwrap().data == data);
    // Plain TCP serves the same shard beside it.
    let plain = daemon.client(true).await;
    assert!(plain.fetch("job", "w").await.unwrap().data == data);

    // Another CA: the client does not trust the daemon, and says why.
    let e = Client::connect_with(&endpoint, trusting(&theirs.ca, None, daemon.options()))
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Connect { .. }), "{e}");
    assert!(e.to_string().contains("certificate"), "{e}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while tls_refusals(&daemon).await < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the failed TLS handshake is counted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // Inside TLS, a daemon that does not require client certificates still
    // needs a key.
    if std::env::var_os("SHARDD_AUTH_KEY_FILE").is_none() {
        let keyless = ClientOptions {
            auth_key: None,
            ..trusting(&ours.ca, None, ClientOptions::default())
        };
        let e = Client::connect_with(&endpoint, keyless).await.unwrap_err();
        assert_eq!(e.status(), Some(Status::Unauthorized), "{e}");
    }
    client.ping().await.unwrap();
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_when_configured_and_name_the_peer() {
    let dir = tempfile::tempdir().unwrap();
    let ours = pki(&dir.path().join("ours"), &["trainer-a"]);
    let theirs = pki(&dir.path().join("theirs"), &["trainer-a"]);
    let config = format!(
        "{}[[access.rules]]\nname = \"trainer a\"\ncertificates = [\"trainer-a\"]\nnamespaces = [\"job-*\"]\nrights = [\"read\", \"write\"]\n",
        tls_config(&ours, true)
    );
    let mut daemon = TestDaemon::start(engines()[0], &config).await;
    let endpoint = daemon.tls_endpoint();
    let no_key = ClientOptions {
        auth_key: None,
        ..ClientOptions::default()
    };

    // Its certificate is its identity: no key needed, the rule applies.
    let trainer = Client::connect_with(&endpoint, trusting(&ours.ca, Some(&ours.clients[0]), no_key.clone()))
        .await
        .unwrap();
    trainer
        .put("job-a", "w", vec![3u8; 8192], PutOptions::default())
        .await
        .unwrap();
    let e = trainer
        .put("team-b", "w", vec![3u8; 16], PutOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(Status::Unauthorized), "{e}");
    assert!(e.to_string().contains("certificate \"trainer-a\""), "{e}");

    // No certificate, or one another CA signed: no connection.
    for client in [None, Some(&theirs.clients[0])] {
        let result = Client::connect_with(&endpoint, trusting(&ours.ca, client, no_key.clone())).await;
        let e = result.expect_err("refused");
        assert!(
            matches!(e, ClientError::Connect { .. } | ClientError::Disconnected { .. }),
            "{e}"
        );
    }
    trainer.ping().await.unwrap();
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_reads_the_certificate_files_again() {
    let dir = tempfile::tempdir().unwrap();
    let old = pki(&dir.path().join("old"), &[]);
    let new = pki(&dir.path().join("new"), &[]);
    // The daemon's files, at paths that stay while their contents change.
    let (cert, key) = (dir.path().join("node.crt"), dir.path().join("node.key"));
    std::fs::copy(&old.server.0, &cert).unwrap();
    std::fs::copy(&old.server.1, &key).unwrap();
    let config = format!(
        "[tls]\nlisten = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    let mut daemon = TestDaemon::start(engines()[0], &config).await;
    let endpoint = daemon.tls_endpoint();
    let before = Client::connect_with(&endpoint, trusting(&old.ca, None, daemon.options()))
        .await
        .unwrap();

    std::fs::copy(&new.server.0, &cert).unwrap();
    std::fs::copy(&new.server.1, &key).unwrap();
    let reloaded = daemon.reload_with(&config);
    assert!(reloaded.applied.iter().any(|a| a.starts_with("tls")), "{reloaded:?}");
    Client::connect_with(&endpoint, trusting(&new.ca, None, daemon.options()))
        .await
        .expect("the new certificate is shown");
    let e = Client::connect_with(&endpoint, trusting(&old.ca, None, daemon.options()))
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Connect { .. }), "{e}");
    // Connections made before stay.
    before.ping().await.unwrap();

    // Files that do not load keep the certificate in force.
    std::fs::write(&key, "not a key").unwrap();
    let reloaded = daemon.reload_with(&config);
    assert!(reloaded.failed.iter().any(|f| f.contains("tls.key")), "{reloaded:?}");
    Client::connect_with(&endpoint, trusting(&new.ca, None, daemon.options()))
        .await
        .expect("the certificate in force stays");
    daemon.stop().await;
}
