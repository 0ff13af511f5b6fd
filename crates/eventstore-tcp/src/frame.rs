//! The sans-IO frame codec: [`Frame`], [`FrameDecoder`], [`Credentials`], [`Flags`].
//!
//! Layout (all integers little-endian):
//!
//! | offset | size | field                                                      |
//! |--------|------|------------------------------------------------------------|
//! | 0      | 4    | length of what follows (18 ≤ length ≤ 64 MiB)              |
//! | 4      | 1    | command ([`Command`])                                      |
//! | 5      | 1    | flags (0x01 authenticated, 0x02 trusted write)             |
//! | 6      | 16   | correlation id (the bytes are echoed; see [`crate::guid`]) |
//! | 22     | var  | credentials if authenticated: `u8` length + login, `u8` length + password |
//! | …      | rest | payload (protobuf, UTF-8 text or empty)                    |

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use uuid::Uuid;

use crate::command::Command;

/// The most a frame's length field may say (the servers' and .NET client's framer limit).
pub const MAX_FRAME: usize = 64 * 1024 * 1024;
/// The least: command, flags and correlation id.
pub const MIN_FRAME: usize = 18;
/// The longest login or password the servers (20.x and later) accept, in bytes.
pub const MAX_CREDENTIAL: usize = 127;

/// Frame flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags(u8);

impl Flags {
    /// Credentials follow the correlation id.
    pub const AUTHENTICATED: u8 = 0x01;
    /// Internal to a cluster; a server closes an external connection that sets it.
    pub const TRUSTED_WRITE: u8 = 0x02;

    /// From the raw byte.
    pub const fn from_bits(bits: u8) -> Self {
        Self(bits)
    }

    /// The raw byte.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether credentials follow.
    pub const fn authenticated(self) -> bool {
        self.0 & Self::AUTHENTICATED != 0
    }
}

/// A login and password, sent in a frame's auth block. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    login: String,
    password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("login", &self.login)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Why credentials cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialsError {
    /// Longer than the servers accept.
    #[error("the {0} is longer than {MAX_CREDENTIAL} bytes, which servers refuse")]
    TooLong(&'static str),
    /// A first byte ≥ 0x80 makes 20.x+ servers read the auth block as a JWT.
    #[error(
        "the login starts with a non-ASCII character, which 20.x and later servers misread as a token; use an ASCII first character"
    )]
    NonAsciiStart,
    /// Empty login.
    #[error("the login is empty")]
    EmptyLogin,
}

impl Credentials {
    /// Check and wrap a login and password.
    pub fn new(
        login: impl Into<String>,
        password: impl Into<String>,
    ) -> Result<Self, CredentialsError> {
        let (login, password) = (login.into(), password.into());
        if login.is_empty() {
            return Err(CredentialsError::EmptyLogin);
        }
        if login.len() > MAX_CREDENTIAL {
            return Err(CredentialsError::TooLong("login"));
        }
        if password.len() > MAX_CREDENTIAL {
            return Err(CredentialsError::TooLong("password"));
        }
        if login.as_bytes()[0] >= 0x80 {
            return Err(CredentialsError::NonAsciiStart);
        }
        Ok(Self { login, password })
    }

    /// The login.
    pub fn login(&self) -> &str {
        &self.login
    }

    /// The password.
    pub fn password(&self) -> &str {
        &self.password
    }
}

/// One frame (a "package" in the servers' terms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What it is.
    pub command: Command,
    /// Flag bits other than "authenticated", which follows from `credentials`.
    pub flags: Flags,
    /// The correlation id, as the 16 bytes on the wire.
    pub correlation: [u8; 16],
    /// Credentials for this frame.
    pub credentials: Option<Credentials>,
    /// The payload.
    pub payload: Bytes,
}

impl Frame {
    /// A frame without credentials.
    pub fn new(command: Command, correlation: [u8; 16], payload: impl Into<Bytes>) -> Self {
        Self {
            command,
            flags: Flags::default(),
            correlation,
            credentials: None,
            payload: payload.into(),
        }
    }

    /// A frame with a correlation id from a UUID in RFC byte order (the id is only echoed,
    /// so the order does not matter for correlation).
    pub fn with_uuid(command: Command, correlation: Uuid, payload: impl Into<Bytes>) -> Self {
        Self::new(command, *correlation.as_bytes(), payload)
    }

    /// The same frame with credentials.
    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// The correlation id as a UUID (RFC byte order of the wire bytes).
    pub fn correlation_uuid(&self) -> Uuid {
        Uuid::from_bytes(self.correlation)
    }

    /// The number after the length prefix.
    pub fn body_len(&self) -> usize {
        MIN_FRAME
            + self
                .credentials
                .as_ref()
                .map_or(0, |c| 2 + c.login.len() + c.password.len())
            + self.payload.len()
    }

    /// Append the encoded frame to `out`.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), FrameError> {
        let len = self.body_len();
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge(len));
        }
        out.reserve(4 + len);
        out.put_u32_le(len as u32);
        out.put_u8(self.command.code());
        let mut flags = self.flags.bits() & !Flags::AUTHENTICATED;
        if self.credentials.is_some() {
            flags |= Flags::AUTHENTICATED;
        }
        out.put_u8(flags);
        out.put_slice(&self.correlation);
        if let Some(c) = &self.credentials {
            out.put_u8(c.login.len() as u8);
            out.put_slice(c.login.as_bytes());
            out.put_u8(c.password.len() as u8);
            out.put_slice(c.password.as_bytes());
        }
        out.put_slice(&self.payload);
        Ok(())
    }

    /// The encoded frame.
    pub fn to_bytes(&self) -> Result<Bytes, FrameError> {
        let mut out = BytesMut::new();
        self.encode(&mut out)?;
        Ok(out.freeze())
    }
}

/// A byte stream that is not a valid frame sequence. The connection must be closed (the
/// servers answer with BadRequest and close).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length field is above 64 MiB.
    #[error("frame length {0} is above the 64 MiB limit")]
    TooLarge(usize),
    /// The length field is below 18.
    #[error("frame length {0} is below the 18-byte minimum")]
    TooShort(usize),
    /// The auth block runs past the frame or is not UTF-8.
    #[error("malformed credentials in a frame: {0}")]
    BadCredentials(&'static str),
}

/// Splits a byte stream into frames; feed it whatever arrives.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The buffer to read into directly (append with `BufMut`).
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Bytes held that do not form a whole frame yet.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge(len));
        }
        if len < MIN_FRAME {
            return Err(FrameError::TooShort(len));
        }
        if self.buf.len() < 4 + len {
            self.buf.reserve(4 + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(4);
        let mut body = self.buf.split_to(len).freeze();
        decode_body(&mut body).map(Some)
    }
}

fn decode_body(body: &mut Bytes) -> Result<Frame, FrameError> {
    let command = Command::from_code(body.get_u8());
    let flags = Flags::from_bits(body.get_u8());
    let mut correlation = [0; 16];
    body.copy_to_slice(&mut correlation);
    let credentials = if flags.authenticated() {
        let login = take_string(body, "login")?;
        let password = take_string(body, "password")?;
        Some(Credentials { login, password })
    } else {
        None
    };
    Ok(Frame {
        command,
        flags: Flags::from_bits(flags.bits() & !Flags::AUTHENTICATED),
        correlation,
        credentials,
        payload: std::mem::take(body),
    })
}

fn take_string(body: &mut Bytes, what: &'static str) -> Result<String, FrameError> {
    if body.is_empty() {
        return Err(FrameError::BadCredentials(what));
    }
    let n = body.get_u8() as usize;
    if body.len() < n {
        return Err(FrameError::BadCredentials(what));
    }
    String::from_utf8(body.split_to(n).to_vec()).map_err(|_| FrameError::BadCredentials(what))
}

#[cfg(test)]
mod tests;
