//! TCP authentication against a real daemon: the key exchange in the hello
//! refuses a missing key, an unknown key, a wrong secret, a replayed
//! exchange and a request before the proof, each answered `unauthorized`,
//! closed, counted and never harming other connections; the key's id is the
//! peer's identity in the access table; Unix peers need no key.

use shardd_client::{AuthKey, Client, ClientError, ClientOptions, PutOptions, Status};
use shardd_protocol::{AuthenticateRequest, Key, Namespace, Opcode, StatRequest};
use shardd_tests::{RawClient, TestDaemon, engines, http_get, sample, test_key};

/// Times the daemon refused a TCP hello for `reason`.
async fn refusals(daemon: &TestDaemon, reason: &str) -> f64 {
    let (_, text) = http_get(&format!("{}/metrics", daemon.http_url())).await;
    let series = format!("shardd_handshake_refusals_total{{reason=\"{reason}\",transport=\"tcp\"}}");
    sample(&text, &series).unwrap_or_else(|| panic!("no {series} in the metrics"))
}

fn options_with(key: Option<AuthKey>) -> ClientOptions {
    ClientOptions {
        auth_key: key,
        ..ClientOptions::default()
    }
}

fn stat(key: &str) -> StatRequest {
    StatRequest {
        namespace: Namespace::new("job").unwrap(),
        key: Key::new(key).unwrap(),
    }
}

fn refused_remotely(e: &ClientError, needle: &str) {
    match e {
        ClientError::Remote { status, message, .. } => {
            assert_eq!(*status, Status::Unauthorized, "{message}");
            assert!(message.contains(needle), "{message:?} lacks {needle:?}");
        }
        other => panic!("expected an unauthorized answer, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_client_that_proves_the_key_is_served_over_tcp() {
    // A client without a key reads SHARDD_AUTH_KEY_FILE.
    if std::env::var_os("SHARDD_AUTH_KEY_FILE").is_some() {
        shardd_tests::skipped("the keyless cases of the TCP authentication test: SHARDD_AUTH_KEY_FILE is set");
        return;
    }
    let mut daemon = TestDaemon::start(engines()[0], "").await;
    let good = daemon.client(true).await;
    good.put("job", "k", b"secret bytes".to_vec(), PutOptions::default())
        .await
        .unwrap();

    // No key.
    let e = Client::connect_with(&daemon.tcp_endpoint(), options_with(None))
        .await
        .unwrap_err();
    refused_remotely(&e, "needs a key");
    // A key of another secret (its own id, or the daemon's id): unknown.
    for id in ["intruder", "tests"] {
        let other = AuthKey::generate(id).unwrap();
        let e = Client::connect_with(&daemon.tcp_endpoint(), options_with(Some(other)))
            .await
            .unwrap_err();
        refused_remotely(&e, "is not one this daemon accepts");
    }
    assert_eq!(refusals(&daemon, "no_key").await, 1.0);
    assert_eq!(refusals(&daemon, "unknown_key").await, 2.0);

    // The right key: served, and the daemon proved it holds it too.
    let client = Client::connect_with(&daemon.tcp_endpoint(), daemon.options())
        .await
        .unwrap();
    assert_eq!(client.fetch("job", "k").await.unwrap().data, b"secret bytes");
    // Unix peers need no key.
    let local = Client::connect_with(&daemon.unix_endpoint(), options_with(None))
        .await
        .unwrap();
    local.ping().await.unwrap();
    // And every refusal left the other connections alone.
    good.ping().await.unwrap();
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_proof_a_replay_and_a_request_before_the_proof_are_refused_and_closed() {
    let mut daemon = TestDaemon::start(engines()[0], "").await;
    let good = daemon.client(true).await;
    let key = test_key();

    // A client that names the daemon's key (its id and fingerprint) but
    // holds another secret: the daemon's proof does not hold for it, and
    // its own proof is refused.
    let mut raw = RawClient::connect(&daemon, true).await;
    let hello = RawClient::hello_request("forger", false, Some(key));
    let answer = raw.say_hello(&hello).await;
    let forged = AuthKey::generate("tests").unwrap();
    let (proof, daemon_proved) = RawClient::proof(&forged, &hello, &answer);
    assert!(!daemon_proved, "a daemon's proof holds only for its own secret");
    raw.request(Opcode::Authenticate, 2, &AuthenticateRequest { proof })
        .await;
    raw.expect_error(Status::Unauthorized, 2, "does not hold").await;
    raw.expect_closed().await;

    // A recorded exchange of the right key, replayed on a new connection:
    // the daemon's nonce is new, so the recorded proof fails.
    let mut recorded = RawClient::connect(&daemon, true).await;
    let hello = RawClient::hello_request("recorded", false, Some(key));
    let answer = recorded.say_hello(&hello).await;
    let (proof, daemon_proved) = RawClient::proof(key, &hello, &answer);
    assert!(daemon_proved, "the daemon proves it holds the key");
    recorded
        .request(Opcode::Authenticate, 2, &AuthenticateRequest { proof })
        .await;
    let (header, _) = recorded.recv().await.unwrap();
    assert_eq!(header.status, Status::Ok, "the recorded exchange itself is accepted");
    let mut replay = RawClient::connect(&daemon, true).await;
    let replayed_answer = replay.say_hello(&hello).await;
    assert_ne!(
        replayed_answer.auth.as_ref().unwrap().nonce,
        answer.auth.as_ref().unwrap().nonce
    );
    replay
        .request(Opcode::Authenticate, 2, &AuthenticateRequest { proof })
        .await;
    replay.expect_error(Status::Unauthorized, 2, "replayed").await;
    replay.expect_closed().await;

    // A request where the proof is due: refused, and nothing after it is read.
    let mut eager = RawClient::connect(&daemon, true).await;
    eager
        .say_hello(&RawClient::hello_request("eager", false, Some(key)))
        .await;
    eager.request(Opcode::Stat, 7, &stat("k")).await;
    eager
        .expect_error(Status::Unauthorized, 7, "authenticate before any other request")
        .await;
    eager.expect_closed().await;
    // Also a request instead of the hello's key offer.
    let mut keyless = RawClient::connect(&daemon, true).await;
    keyless
        .request(Opcode::Hello, 1, &RawClient::hello_request("keyless", false, None))
        .await;
    keyless.expect_error(Status::Unauthorized, 1, "needs a key").await;
    keyless.expect_closed().await;

    assert_eq!(refusals(&daemon, "bad_proof").await, 2.0);
    assert_eq!(refusals(&daemon, "not_authenticated").await, 1.0);
    assert_eq!(refusals(&daemon, "no_key").await, 1.0);
    good.ping().await.unwrap();
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_id_is_the_identity_the_access_table_grants_rights_to() {
    let dir = tempfile::tempdir().unwrap();
    let other_file = dir.path().join("other.key");
    let other = AuthKey::generate("other").unwrap();
    other.create(&other_file).unwrap();
    let tests_file = dir.path().join("tests.key");
    test_key().create(&tests_file).unwrap();
    let config = format!(
        "[auth]\nkeys = [{:?}, {:?}]\n\
         [[access.rules]]\nname = \"trainers\"\nkeys = [\"tests\"]\nnamespaces = [\"job-*\"]\nrights = [\"read\", \"write\"]\n",
        tests_file.display().to_string(),
        other_file.display().to_string()
    );
    let mut daemon = TestDaemon::start(engines()[0], &config).await;
    let trainer = daemon.client(true).await;
    trainer
        .put("job-a", "w", vec![1u8; 4096], PutOptions::default())
        .await
        .unwrap();
    assert_eq!(trainer.fetch("job-a", "w").await.unwrap().data, vec![1u8; 4096]);
    let e = trainer.delete("job-a", "w", None).await.unwrap_err();
    refused_remotely(&e, "key \"tests\"");
    let e = trainer
        .put("team-b", "w", vec![1u8; 16], PutOptions::default())
        .await
        .unwrap_err();
    refused_remotely(&e, "no rule covers namespace \"team-b\"");

    // A key the daemon accepts but no rule names gets nothing.
    let stranger = Client::connect_with(&daemon.tcp_endpoint(), options_with(Some(other)))
        .await
        .unwrap();
    let e = stranger.fetch("job-a", "w").await.unwrap_err();
    refused_remotely(&e, "no rule of [access] is for key \"other\"");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_none_serves_tcp_without_keys_and_a_client_with_a_key_refuses_that() {
    if std::env::var_os("SHARDD_AUTH_KEY_FILE").is_some() {
        shardd_tests::skipped("the keyless case of auth = \"none\": SHARDD_AUTH_KEY_FILE is set");
        return;
    }
    let mut daemon = TestDaemon::start(engines()[0], "auth = \"none\"").await;
    let open = Client::connect_with(&daemon.tcp_endpoint(), options_with(None))
        .await
        .unwrap();
    open.ping().await.unwrap();
    // A client that holds a key expects the daemon to prove it; one that
    // does not could be anyone.
    let e = Client::connect_with(&daemon.tcp_endpoint(), daemon.options())
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Auth { .. }), "{e}");
    assert!(
        e.to_string().contains("did not prove that it holds key \"tests\""),
        "{e}"
    );
    daemon.stop().await;
}
