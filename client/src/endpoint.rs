//! Where a daemon listens: `unix://PATH` or `tcp://HOST:PORT`.

use std::path::PathBuf;

use crate::ClientError;

/// A daemon address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A Unix socket path.
    Unix(PathBuf),
    /// A TCP `host:port`.
    Tcp(String),
}

impl Endpoint {
    /// Parses `unix:///abs/path.sock`, `unix://relative.sock`, `unix:path`,
    /// a bare path starting with `/` or `.`, or `tcp://host:port`.
    pub fn parse(text: &str) -> Result<Endpoint, ClientError> {
        let bad = |reason: &str| ClientError::InvalidEndpoint {
            endpoint: text.to_string(),
            reason: reason.to_string(),
        };
        if let Some(rest) = text.strip_prefix("unix:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(bad("the socket path is empty"));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = text.strip_prefix("tcp://") {
            let rest = rest.trim_end_matches('/');
            let Some((host, port)) = rest.rsplit_once(':') else {
                return Err(bad("expected tcp://HOST:PORT"));
            };
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(bad("expected tcp://HOST:PORT with a port from 0 to 65535"));
            }
            return Ok(Endpoint::Tcp(rest.to_string()));
        }
        if text.starts_with('/') || text.starts_with('.') {
            return Ok(Endpoint::Unix(PathBuf::from(text)));
        }
        Err(bad("expected unix://PATH or tcp://HOST:PORT"))
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix://{}", path.display()),
            Endpoint::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}

impl std::str::FromStr for Endpoint {
    type Err = ClientError;
    fn from_str(s: &str) -> Result<Endpoint, ClientError> {
        Endpoint::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(
            Endpoint::parse("unix:///run/shardd/shardd.sock").unwrap(),
            Endpoint::Unix("/run/shardd/shardd.sock".into())
        );
        assert_eq!(
            Endpoint::parse("unix://shardd.sock").unwrap(),
            Endpoint::Unix("shardd.sock".into())
        );
        assert_eq!(
            Endpoint::parse("unix:./s.sock").unwrap(),
            Endpoint::Unix("./s.sock".into())
        );
        assert_eq!(
            Endpoint::parse("./shardd.sock").unwrap(),
            Endpoint::Unix("./shardd.sock".into())
        );
        assert_eq!(
            Endpoint::parse("tcp://10.0.0.2:7070").unwrap(),
            Endpoint::Tcp("10.0.0.2:7070".into())
        );
        assert_eq!(
            Endpoint::parse("tcp://[::1]:7070").unwrap(),
            Endpoint::Tcp("[::1]:7070".into())
        );
        for bad in [
            "tcp://host",
            "tcp://:1",
            "tcp://h:99999",
            "http://x:1",
            "unix://",
            "shardd.sock",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Endpoint::parse("unix:///a.sock").unwrap().to_string(), "unix:///a.sock");
    }
}
