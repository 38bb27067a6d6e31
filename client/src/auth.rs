//! The client's side of the TCP key exchange.
//!
//! A daemon's TCP port needs a key (unless its operator wrote
//! `auth = "none"`): the key file named by [`ClientOptions::auth_key`], else
//! by the `SHARDD_AUTH_KEY_FILE` environment variable. The client offers the
//! key in its hello, checks the daemon's proof that it holds the same key,
//! then proves its own; a daemon that does not prove it is refused, so a
//! client with a key never talks to an impostor (over TLS the daemon's
//! certificate proves who it is, and one that requires client certificates
//! asks for no key). Unix-socket connections need no key.
//!
//! [`ClientOptions::auth_key`]: crate::ClientOptions::auth_key

use std::path::Path;

use shardd_protocol::auth::{AuthKey, Side, Transcript};
use shardd_protocol::{AuthenticateRequest, AuthenticateResponse, HelloRequest, HelloResponse, Opcode};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::ClientError;
use crate::arena::{read_answer_tcp, send_request};

/// The environment variable naming a key file, read when the options name
/// no key.
pub const AUTH_KEY_ENV: &str = "SHARDD_AUTH_KEY_FILE";

/// Reads the key file at `path` (it must be readable only by its owner).
pub fn load_key(path: &Path) -> Result<AuthKey, ClientError> {
    AuthKey::load(path).map_err(|e| ClientError::Auth {
        endpoint: String::new(),
        reason: e.to_string(),
    })
}

/// The key to offer over TCP: `configured`, else the file
/// [`AUTH_KEY_ENV`] names, else none.
pub(crate) fn key_for(configured: Option<&AuthKey>, endpoint: &str) -> Result<Option<AuthKey>, ClientError> {
    if let Some(key) = configured {
        return Ok(Some(key.clone()));
    }
    match std::env::var_os(AUTH_KEY_ENV) {
        Some(path) if !path.is_empty() => AuthKey::load(Path::new(&path))
            .map(Some)
            .map_err(|e| ClientError::Auth {
                endpoint: endpoint.to_string(),
                reason: format!("{e} (named by {AUTH_KEY_ENV})"),
            }),
        _ => Ok(None),
    }
}

/// After the hello's answer: checks the daemon's proof and sends the
/// client's, or says why the daemon cannot be trusted.
pub(crate) async fn prove<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    hello: &HelloRequest,
    answer: &HelloResponse,
    key: Option<&AuthKey>,
    verified: bool,
    endpoint: &str,
) -> Result<(), ClientError> {
    let refused = |reason: String| ClientError::Auth {
        endpoint: endpoint.to_string(),
        reason,
    };
    let key = match key {
        Some(key) if hello.auth.is_some() => key,
        _ if answer.auth.is_some() => {
            return Err(refused(
                "the daemon sent a challenge although no key was offered".into(),
            ));
        }
        _ => return Ok(()),
    };
    let Some((transcript, daemon_proof)) = Transcript::of_exchange(hello, answer) else {
        if verified {
            // Over TLS the daemon's certificate proved who it is, and one
            // that authenticates clients by their certificates asks no key.
            return Ok(());
        }
        return Err(refused(format!(
            "the daemon did not prove that it holds key \"{}\": it serves TCP without authentication \
             (auth = \"none\"), or it is not the daemon meant; connect without a key to accept that",
            key.id()
        )));
    };
    if !key.holds(Side::Server, &transcript, daemon_proof) {
        return Err(refused(format!(
            "the daemon's proof of key \"{}\" does not hold: it holds another secret of that id, \
             or it is not the daemon meant",
            key.id()
        )));
    }
    let request = AuthenticateRequest {
        proof: key.prove(Side::Client, &transcript),
    };
    send_request(stream, Opcode::Authenticate, 2, &request, endpoint).await?;
    let accepted: AuthenticateResponse = read_answer_tcp(stream, endpoint).await?;
    tracing::debug!(endpoint, identity = %accepted.identity, "authenticated");
    Ok(())
}
