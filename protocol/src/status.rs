//! Status codes carried in the header of every response frame.

/// The outcome of a request. Error statuses come with an `ErrorResponse`
/// control message that says what went wrong in words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// The request succeeded.
    Ok,
    /// No such shard (or namespace).
    NotFound,
    /// The put's version is not newer than the stored one, or a delete's
    /// expected version does not match.
    VersionConflict,
    /// The data directories have no room for the shard.
    NoSpace,
    /// Stored bytes (or the put's declared checksum) do not match; the data
    /// is not served.
    ChecksumMismatch,
    /// A length exceeds a limit of the daemon.
    TooLarge,
    /// The peer is not allowed to do this.
    Unauthorized,
    /// The request is malformed or names something invalid.
    BadRequest,
    /// The daemon is at a limit right now; retry later.
    Busy,
    /// The daemon is shutting down and takes no new requests.
    ShuttingDown,
    /// The daemon failed (I/O error, bug); details are in its log.
    Internal,
    /// No protocol version both sides speak.
    UnsupportedVersion,
    /// A drive failed reading or writing (EIO, or its file system went
    /// read-only): shards on that drive cannot be served; the daemon's
    /// other drives and its arena keep serving.
    Io,
    /// A code this crate does not know (sent by a newer peer).
    Other(u16),
}

impl Status {
    /// Every named status, in code order.
    pub const NAMED: [Status; 13] = [
        Status::Ok,
        Status::NotFound,
        Status::VersionConflict,
        Status::NoSpace,
        Status::ChecksumMismatch,
        Status::TooLarge,
        Status::Unauthorized,
        Status::BadRequest,
        Status::Busy,
        Status::ShuttingDown,
        Status::Internal,
        Status::UnsupportedVersion,
        Status::Io,
    ];

    /// The wire code.
    pub const fn code(self) -> u16 {
        match self {
            Status::Ok => 0,
            Status::NotFound => 1,
            Status::VersionConflict => 2,
            Status::NoSpace => 3,
            Status::ChecksumMismatch => 4,
            Status::TooLarge => 5,
            Status::Unauthorized => 6,
            Status::BadRequest => 7,
            Status::Busy => 8,
            Status::ShuttingDown => 9,
            Status::Internal => 10,
            Status::UnsupportedVersion => 11,
            Status::Io => 12,
            Status::Other(code) => code,
        }
    }

    /// The status for a wire code; unknown codes become `Other`.
    pub fn from_code(code: u16) -> Status {
        Status::NAMED
            .into_iter()
            .find(|s| s.code() == code)
            .unwrap_or(Status::Other(code))
    }

    /// A short snake_case name, for logs and metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::NotFound => "not_found",
            Status::VersionConflict => "version_conflict",
            Status::NoSpace => "no_space",
            Status::ChecksumMismatch => "checksum_mismatch",
            Status::TooLarge => "too_large",
            Status::Unauthorized => "unauthorized",
            Status::BadRequest => "bad_request",
            Status::Busy => "busy",
            Status::ShuttingDown => "shutting_down",
            Status::Internal => "internal",
            Status::UnsupportedVersion => "unsupported_version",
            Status::Io => "io_error",
            Status::Other(_) => "other",
        }
    }

    /// Whether the same request may succeed if sent again later unchanged.
    pub const fn is_retryable(self) -> bool {
        matches!(self, Status::Busy | Status::ShuttingDown)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Status::Other(code) => write!(f, "status {code}"),
            named => f.write_str(&named.name().replace('_', " ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_pinned() {
        let codes: Vec<u16> = Status::NAMED.iter().map(|s| s.code()).collect();
        assert_eq!(codes, (0..13).collect::<Vec<u16>>());
        for s in Status::NAMED {
            assert_eq!(Status::from_code(s.code()), s);
        }
        assert_eq!(Status::from_code(500), Status::Other(500));
        assert_eq!(Status::NotFound.to_string(), "not found");
        assert_eq!(Status::Io.to_string(), "io error");
    }
}
