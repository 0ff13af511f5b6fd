//! Erlang terms in Rust: the External Term Format (`term_to_binary` / `binary_to_term`) and
//! `erlang:phash2/1,2`, IO-free. This is how Elixir Mississippi names a message's key: the
//! `sharding_key` header holds `term_to_binary(key)` and the key's queue is
//! `phash2(key, total_count)` (see [`WireFormat::Mississippi`](crate::WireFormat)).
//!
//! * [`Term`] — the terms a key can be: integers of any size, floats, atoms, binaries and
//!   bit strings, lists (proper and improper), tuples, maps, pids, ports, references and
//!   external funs (`fun m:f/a`). Build keys from Rust values with `From` (`&str` and
//!   `String` → binary, integers, `f64`, tuples of up to four, `Vec`) and [`Term::atom`].
//! * [`decode`] — `binary_to_term`, accepting every encoding the VMs write (all four atom
//!   tags, old and new floats, strings, small and large bigs, old and new pid/port/ref
//!   tags), bounded in size and depth ([`Limits`]); malformed input is an [`EtfError`],
//!   never a panic.
//! * [`Term::to_etf`] — `term_to_binary` as OTP 26 writes it (UTF-8 atoms);
//!   [`Term::to_canonical_etf`] — the same with map entries sorted and `-0.0` as `0.0`: one
//!   byte string per term whatever encoding variant arrived, which is what the consumer
//!   uses as the ordering key.
//! * [`phash2`] / [`phash2_range`] / [`hash32`] — a port of ERTS `make_hash2`, exact for
//!   every term above (checked against `erl` in the tests).
//!
//! Funs with closures (`NEW_FUN_EXT`), compressed terms and distribution headers are not
//! decoded (a typed error says so): no Mississippi key is one.

mod phash2;

pub use phash2::{hash32, phash2, phash2_range};

/// The version byte every external term starts with.
const VERSION: u8 = 131;

mod tag {
    pub(super) const NEW_FLOAT: u8 = 70;
    pub(super) const BIT_BINARY: u8 = 77;
    pub(super) const NEW_PID: u8 = 88;
    pub(super) const NEW_PORT: u8 = 89;
    pub(super) const NEWER_REFERENCE: u8 = 90;
    pub(super) const SMALL_INTEGER: u8 = 97;
    pub(super) const INTEGER: u8 = 98;
    pub(super) const FLOAT: u8 = 99;
    pub(super) const ATOM: u8 = 100;
    pub(super) const REFERENCE: u8 = 101;
    pub(super) const PORT: u8 = 102;
    pub(super) const PID: u8 = 103;
    pub(super) const SMALL_TUPLE: u8 = 104;
    pub(super) const LARGE_TUPLE: u8 = 105;
    pub(super) const NIL: u8 = 106;
    pub(super) const STRING: u8 = 107;
    pub(super) const LIST: u8 = 108;
    pub(super) const BINARY: u8 = 109;
    pub(super) const SMALL_BIG: u8 = 110;
    pub(super) const LARGE_BIG: u8 = 111;
    pub(super) const EXPORT: u8 = 113;
    pub(super) const NEW_REFERENCE: u8 = 114;
    pub(super) const SMALL_ATOM: u8 = 115;
    pub(super) const MAP: u8 = 116;
    pub(super) const ATOM_UTF8: u8 = 118;
    pub(super) const SMALL_ATOM_UTF8: u8 = 119;
    pub(super) const V4_PORT: u8 = 120;
}

/// The most characters an atom may have (the VM's limit).
const MAX_ATOM_CHARS: usize = 255;

/// An Erlang term.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Term {
    /// An integer that fits in an `i64`.
    Int(i64),
    /// An integer that does not (see [`BigInt`]).
    Big(BigInt),
    /// A float (finite: the VM has no NaN or infinity).
    Float(f64),
    /// An atom (`true`, `false` and Elixir's `nil` are atoms too).
    Atom(String),
    /// A binary (an Elixir string is one).
    Binary(Vec<u8>),
    /// A bit string whose length is not a whole number of bytes: `bytes` holds them, the
    /// last one with only its `tail_bits` (1–7) high bits significant.
    Bits {
        /// The bytes, the last one partial.
        bytes: Vec<u8>,
        /// Significant bits of the last byte (1–7).
        tail_bits: u8,
    },
    /// A proper list (`[]` when empty; an Erlang string is a list of integers).
    List(Vec<Self>),
    /// An improper list: elements (at least one) and a tail that is not a list.
    ImproperList(Vec<Self>, Box<Self>),
    /// A tuple.
    Tuple(Vec<Self>),
    /// A map, entries in the order they came.
    Map(Vec<(Self, Self)>),
    /// A process identifier.
    Pid {
        /// The node's name.
        node: String,
        /// The process number.
        id: u32,
        /// The serial.
        serial: u32,
        /// The node's creation.
        creation: u32,
    },
    /// A port identifier.
    Port {
        /// The node's name.
        node: String,
        /// The port number.
        id: u64,
        /// The node's creation.
        creation: u32,
    },
    /// A reference.
    Reference {
        /// The node's name.
        node: String,
        /// The node's creation.
        creation: u32,
        /// The reference's words (1–5).
        ids: Vec<u32>,
    },
    /// An external fun, `fun module:function/arity`.
    Export {
        /// The module.
        module: String,
        /// The function.
        function: String,
        /// The arity.
        arity: u8,
    },
}

/// An integer outside the `i64` range: a sign and the magnitude's bytes, least significant
/// first, without trailing zeros.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BigInt {
    negative: bool,
    magnitude: Vec<u8>,
}

impl BigInt {
    /// Whether the integer is negative.
    pub fn is_negative(&self) -> bool {
        self.negative
    }

    /// The magnitude, least significant byte first.
    pub fn magnitude(&self) -> &[u8] {
        &self.magnitude
    }
}

impl Term {
    /// An atom.
    pub fn atom(name: impl Into<String>) -> Self {
        Self::Atom(name.into())
    }

    /// A tuple of `elements`.
    pub fn tuple(elements: impl IntoIterator<Item = Self>) -> Self {
        Self::Tuple(elements.into_iter().collect())
    }

    /// A map of `entries`.
    pub fn map(entries: impl IntoIterator<Item = (Self, Self)>) -> Self {
        Self::Map(entries.into_iter().collect())
    }

    /// The integer `sign × magnitude` (bytes least significant first), as an [`Term::Int`]
    /// when it fits in an `i64`.
    pub fn integer(negative: bool, magnitude_le: &[u8]) -> Self {
        let len = magnitude_le
            .iter()
            .rposition(|b| *b != 0)
            .map_or(0, |i| i + 1);
        let magnitude = &magnitude_le[..len];
        if len <= 8 {
            let mut word = [0u8; 8];
            word[..len].copy_from_slice(magnitude);
            let value = u64::from_le_bytes(word);
            if !negative && i64::try_from(value).is_ok() {
                return Self::Int(value as i64);
            }
            if negative && value <= 1 << 63 {
                return Self::Int((value as i64).wrapping_neg());
            }
        }
        Self::Big(BigInt {
            negative,
            magnitude: magnitude.to_vec(),
        })
    }

    /// `term_to_binary` as OTP 26 writes it: atoms in UTF-8, integers in their smallest
    /// form, map entries in the order held. Errors for terms the VM cannot hold (an atom
    /// over 255 characters, a non-finite float, a bit string without bits).
    pub fn to_etf(&self) -> Result<Vec<u8>, EtfError> {
        let mut out = vec![VERSION];
        encode(self, &mut out, false, 0)?;
        Ok(out)
    }

    /// [`Term::to_etf`], with map entries sorted by their encoded keys and `-0.0` written
    /// as `0.0` (equal terms, one encoding): the key a Mississippi-mode consumer orders by.
    pub fn to_canonical_etf(&self) -> Result<Vec<u8>, EtfError> {
        let mut out = vec![VERSION];
        encode(self, &mut out, true, 0)?;
        Ok(out)
    }
}

impl From<&str> for Term {
    /// A binary, as Elixir writes `"user-1"`.
    fn from(s: &str) -> Self {
        Self::Binary(s.as_bytes().to_vec())
    }
}

impl From<String> for Term {
    /// A binary, as Elixir writes `"user-1"`.
    fn from(s: String) -> Self {
        Self::Binary(s.into_bytes())
    }
}

impl From<&[u8]> for Term {
    fn from(b: &[u8]) -> Self {
        Self::Binary(b.to_vec())
    }
}

impl From<f64> for Term {
    fn from(f: f64) -> Self {
        Self::Float(f)
    }
}

impl From<bool> for Term {
    /// The atom `true` or `false`.
    fn from(b: bool) -> Self {
        Self::atom(if b { "true" } else { "false" })
    }
}

macro_rules! from_small_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Term {
            fn from(n: $t) -> Self {
                Self::Int(i64::from(n))
            }
        }
    )*};
}
from_small_int!(i8, i16, i32, i64, u8, u16, u32);

impl From<u64> for Term {
    fn from(n: u64) -> Self {
        Self::integer(false, &n.to_le_bytes())
    }
}

impl From<i128> for Term {
    fn from(n: i128) -> Self {
        Self::integer(n < 0, &n.unsigned_abs().to_le_bytes())
    }
}

impl<T: Into<Self>> From<Vec<T>> for Term {
    /// A proper list.
    fn from(items: Vec<T>) -> Self {
        Self::List(items.into_iter().map(Into::into).collect())
    }
}

macro_rules! from_tuple {
    ($($name:ident),+) => {
        impl<$($name: Into<Term>),+> From<($($name,)+)> for Term {
            #[allow(non_snake_case)]
            fn from(($($name,)+): ($($name,)+)) -> Self {
                Self::Tuple(vec![$($name.into()),+])
            }
        }
    };
}
from_tuple!(A);
from_tuple!(A, B);
from_tuple!(A, B, C);
from_tuple!(A, B, C, D);

/// Bounds on what [`decode_with`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// The most bytes of input (default 64 KiB: far above any key, far below memory
    /// trouble).
    pub max_bytes: usize,
    /// The deepest nesting of lists, tuples and maps (default 64).
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 64 * 1024,
            max_depth: 64,
        }
    }
}

/// Why bytes are not a term we decode, or a term cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EtfError {
    /// The first byte is not the format's version (131).
    #[error("not an Erlang external term: the first byte is {0}, not 131")]
    Version(u8),
    /// The input ends inside a term.
    #[error("the term is cut short at byte {at}")]
    Truncated {
        /// Where more bytes were needed.
        at: usize,
    },
    /// A tag this codec does not know or does not decode.
    #[error(
        "unsupported term tag {tag} at byte {at} (funs with closures, compressed terms and distribution headers are not decoded)"
    )]
    Tag {
        /// The tag.
        tag: u8,
        /// Where.
        at: usize,
    },
    /// The input is longer than [`Limits::max_bytes`].
    #[error("the term is {len} bytes, more than the limit of {limit}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// Nesting deeper than [`Limits::max_depth`].
    #[error("the term nests deeper than {0} levels")]
    TooDeep(usize),
    /// Bytes follow the term.
    #[error("{0} bytes follow the term")]
    Trailing(usize),
    /// A field's value is impossible.
    #[error("invalid {what} at byte {at}")]
    Invalid {
        /// Which field.
        what: &'static str,
        /// Where.
        at: usize,
    },
    /// The term cannot be written (the VM could not hold it either).
    #[error("cannot encode the term: {0}")]
    Unencodable(&'static str),
}

/// `binary_to_term` with the default [`Limits`].
pub fn decode(bytes: &[u8]) -> Result<Term, EtfError> {
    decode_with(bytes, Limits::default())
}

/// `binary_to_term`: the whole of `bytes` must be one term, within `limits`.
pub fn decode_with(bytes: &[u8], limits: Limits) -> Result<Term, EtfError> {
    if bytes.len() > limits.max_bytes {
        return Err(EtfError::TooLarge {
            len: bytes.len(),
            limit: limits.max_bytes,
        });
    }
    let mut r = Reader {
        buf: bytes,
        pos: 0,
        depth: 0,
        max_depth: limits.max_depth,
    };
    let version = r.u8()?;
    if version != VERSION {
        return Err(EtfError::Version(version));
    }
    let term = r.term()?;
    match bytes.len() - r.pos {
        0 => Ok(term),
        n => Err(EtfError::Trailing(n)),
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    depth: usize,
    max_depth: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EtfError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.buf.len())
            .ok_or(EtfError::Truncated { at: self.pos })?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], EtfError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, EtfError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, EtfError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, EtfError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// A count of items that each take at least one byte: never more than the bytes left,
    /// so a forged count cannot make us allocate.
    fn count(&mut self, n: usize) -> Result<usize, EtfError> {
        if n > self.buf.len() - self.pos {
            return Err(EtfError::Truncated { at: self.pos });
        }
        Ok(n)
    }

    fn invalid(&self, what: &'static str) -> EtfError {
        EtfError::Invalid { what, at: self.pos }
    }

    fn nested<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, EtfError>,
    ) -> Result<T, EtfError> {
        if self.depth >= self.max_depth {
            return Err(EtfError::TooDeep(self.max_depth));
        }
        self.depth += 1;
        let out = f(self);
        self.depth -= 1;
        out
    }

    fn term(&mut self) -> Result<Term, EtfError> {
        let at = self.pos;
        let t = self.u8()?;
        Ok(match t {
            tag::SMALL_INTEGER => Term::Int(i64::from(self.u8()?)),
            tag::INTEGER => Term::Int(i64::from(i32::from_be_bytes(self.array()?))),
            tag::SMALL_BIG | tag::LARGE_BIG => {
                let n = if t == tag::SMALL_BIG {
                    usize::from(self.u8()?)
                } else {
                    self.u32()? as usize
                };
                let sign = self.u8()?;
                if sign > 1 {
                    return Err(self.invalid("big integer sign"));
                }
                Term::integer(sign == 1, self.take(n)?)
            }
            tag::NEW_FLOAT => {
                let value = f64::from_be_bytes(self.array()?);
                self.float(value)?
            }
            tag::FLOAT => {
                let text = self.take(31)?;
                let end = text.iter().position(|b| *b == 0).unwrap_or(text.len());
                let value = std::str::from_utf8(&text[..end])
                    .ok()
                    .and_then(|s| s.trim().parse::<f64>().ok())
                    .ok_or_else(|| self.invalid("float text"))?;
                self.float(value)?
            }
            tag::ATOM | tag::SMALL_ATOM | tag::ATOM_UTF8 | tag::SMALL_ATOM_UTF8 => {
                Term::Atom(self.atom_body(t)?)
            }
            tag::BINARY => {
                let n = self.u32()? as usize;
                Term::Binary(self.take(n)?.to_vec())
            }
            tag::BIT_BINARY => {
                let n = self.u32()? as usize;
                let bits = self.u8()?;
                let data = self.take(n)?;
                match (n, bits) {
                    (0, _) | (_, 8) => Term::Binary(data.to_vec()),
                    (_, 1..=7) => {
                        let mut bytes = data.to_vec();
                        // Only the high `bits` of the last byte count.
                        if let Some(last) = bytes.last_mut() {
                            *last &= 0xff << (8 - bits);
                        }
                        Term::Bits {
                            bytes,
                            tail_bits: bits,
                        }
                    }
                    _ => return Err(self.invalid("bit string length")),
                }
            }
            tag::NIL => Term::List(Vec::new()),
            tag::STRING => {
                let n = usize::from(self.u16()?);
                Term::List(
                    self.take(n)?
                        .iter()
                        .map(|b| Term::Int(i64::from(*b)))
                        .collect(),
                )
            }
            tag::LIST => self.nested(|r| {
                let n = r.u32()? as usize;
                let n = r.count(n)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(r.term()?);
                }
                Ok(match r.term()? {
                    // `[a | [b]]` written the long way is the list `[a, b]`.
                    Term::List(rest) => {
                        items.extend(rest);
                        Term::List(items)
                    }
                    Term::ImproperList(rest, tail) => {
                        items.extend(rest);
                        Term::ImproperList(items, tail)
                    }
                    tail if items.is_empty() => tail,
                    tail => Term::ImproperList(items, Box::new(tail)),
                })
            })?,
            tag::SMALL_TUPLE | tag::LARGE_TUPLE => self.nested(|r| {
                let n = if t == tag::SMALL_TUPLE {
                    usize::from(r.u8()?)
                } else {
                    r.u32()? as usize
                };
                let n = r.count(n)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(r.term()?);
                }
                Ok(Term::Tuple(items))
            })?,
            tag::MAP => self.nested(|r| {
                let n = r.u32()? as usize;
                let n = r.count(n.saturating_mul(2))? / 2;
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    let key = r.term()?;
                    entries.push((key, r.term()?));
                }
                Ok(Term::Map(entries))
            })?,
            tag::PID | tag::NEW_PID => {
                let node = self.node()?;
                let id = self.u32()?;
                let serial = self.u32()?;
                let creation = self.creation(t == tag::NEW_PID)?;
                Term::Pid {
                    node,
                    id,
                    serial,
                    creation,
                }
            }
            tag::PORT | tag::NEW_PORT | tag::V4_PORT => {
                let node = self.node()?;
                let id = if t == tag::V4_PORT {
                    u64::from_be_bytes(self.array()?)
                } else {
                    u64::from(self.u32()?)
                };
                let creation = self.creation(t != tag::PORT)?;
                Term::Port { node, id, creation }
            }
            tag::REFERENCE => {
                let node = self.node()?;
                let id = self.u32()?;
                let creation = self.creation(false)?;
                Term::Reference {
                    node,
                    creation,
                    ids: vec![id],
                }
            }
            tag::NEW_REFERENCE | tag::NEWER_REFERENCE => {
                let len = usize::from(self.u16()?);
                if !(1..=5).contains(&len) {
                    return Err(self.invalid("reference length"));
                }
                let node = self.node()?;
                let creation = self.creation(t == tag::NEWER_REFERENCE)?;
                let ids = (0..len).map(|_| self.u32()).collect::<Result<_, _>>()?;
                Term::Reference {
                    node,
                    creation,
                    ids,
                }
            }
            tag::EXPORT => {
                let module = self.atom()?;
                let function = self.atom()?;
                let arity = match self.term()? {
                    Term::Int(n) => u8::try_from(n).map_err(|_| self.invalid("arity"))?,
                    _ => return Err(self.invalid("arity")),
                };
                Term::Export {
                    module,
                    function,
                    arity,
                }
            }
            other => return Err(EtfError::Tag { tag: other, at }),
        })
    }

    fn float(&self, value: f64) -> Result<Term, EtfError> {
        if value.is_finite() {
            Ok(Term::Float(value))
        } else {
            Err(self.invalid("float (not finite)"))
        }
    }

    /// The creation of a pid, port or reference: 32 bits in the new tags, 8 in the old.
    fn creation(&mut self, wide: bool) -> Result<u32, EtfError> {
        if wide {
            self.u32()
        } else {
            Ok(u32::from(self.u8()?))
        }
    }

    /// An atom term (any of the four tags).
    fn atom(&mut self) -> Result<String, EtfError> {
        match self.u8()? {
            t @ (tag::ATOM | tag::SMALL_ATOM | tag::ATOM_UTF8 | tag::SMALL_ATOM_UTF8) => {
                self.atom_body(t)
            }
            _ => Err(self.invalid("atom")),
        }
    }

    fn node(&mut self) -> Result<String, EtfError> {
        self.atom()
    }

    fn atom_body(&mut self, t: u8) -> Result<String, EtfError> {
        let n = match t {
            tag::SMALL_ATOM | tag::SMALL_ATOM_UTF8 => usize::from(self.u8()?),
            _ => usize::from(self.u16()?),
        };
        let bytes = self.take(n)?;
        let name = if matches!(t, tag::ATOM | tag::SMALL_ATOM) {
            // Latin-1: every byte is the code point.
            bytes.iter().map(|b| char::from(*b)).collect()
        } else {
            String::from_utf8(bytes.to_vec()).map_err(|_| self.invalid("UTF-8 atom"))?
        };
        if name.chars().count() > MAX_ATOM_CHARS {
            return Err(self.invalid("atom (over 255 characters)"));
        }
        Ok(name)
    }
}

/// Write `term`, which sits inside `depth` lists, tuples or maps: no deeper than the
/// decoder's default [`Limits`] accept, so what we write we can read back.
fn encode(term: &Term, out: &mut Vec<u8>, canonical: bool, depth: usize) -> Result<(), EtfError> {
    let len32 = |n: usize| u32::try_from(n).map_err(|_| EtfError::Unencodable("over 2^32 items"));
    let container = matches!(
        term,
        Term::List(_) | Term::ImproperList(..) | Term::Tuple(_) | Term::Map(_)
    );
    if container && depth >= Limits::default().max_depth {
        return Err(EtfError::Unencodable("nested deeper than 64 levels"));
    }
    let inner = depth + 1;
    match term {
        Term::Int(n @ 0..=255) => {
            out.extend([tag::SMALL_INTEGER, *n as u8]);
        }
        Term::Int(n) => match i32::try_from(*n) {
            Ok(small) => {
                out.push(tag::INTEGER);
                out.extend(small.to_be_bytes());
            }
            Err(_) => {
                let magnitude = n.unsigned_abs().to_le_bytes();
                let len = magnitude.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
                put_big(out, *n < 0, &magnitude[..len]);
            }
        },
        Term::Big(big) => put_big(out, big.negative, &big.magnitude),
        Term::Float(f) => {
            if !f.is_finite() {
                return Err(EtfError::Unencodable("a float that is not finite"));
            }
            let f = if canonical && *f == 0.0 { 0.0 } else { *f };
            out.push(tag::NEW_FLOAT);
            out.extend(f.to_be_bytes());
        }
        Term::Atom(name) => put_atom(out, name)?,
        Term::Binary(bytes) => {
            out.push(tag::BINARY);
            out.extend(len32(bytes.len())?.to_be_bytes());
            out.extend(bytes);
        }
        Term::Bits { bytes, tail_bits } => {
            if bytes.is_empty() || !(1..=7).contains(tail_bits) {
                return Err(EtfError::Unencodable(
                    "a bit string needs bytes and 1-7 tail bits",
                ));
            }
            out.push(tag::BIT_BINARY);
            out.extend(len32(bytes.len())?.to_be_bytes());
            out.push(*tail_bits);
            out.extend(&bytes[..bytes.len() - 1]);
            out.push(bytes[bytes.len() - 1] & (0xff << (8 - tail_bits)));
        }
        Term::List(items) if items.is_empty() => out.push(tag::NIL),
        Term::List(items) => {
            let bytes: Option<Vec<u8>> = items
                .iter()
                .map(|t| match t {
                    Term::Int(n) => u8::try_from(*n).ok(),
                    _ => None,
                })
                .collect();
            match bytes {
                Some(bytes) if bytes.len() <= usize::from(u16::MAX) => {
                    out.push(tag::STRING);
                    out.extend((bytes.len() as u16).to_be_bytes());
                    out.extend(bytes);
                }
                _ => {
                    put_list(out, items, canonical, inner)?;
                    out.push(tag::NIL);
                }
            }
        }
        Term::ImproperList(items, tail) => {
            if items.is_empty() || matches!(**tail, Term::List(_) | Term::ImproperList(..)) {
                return Err(EtfError::Unencodable(
                    "an improper list needs elements and a tail that is not a list",
                ));
            }
            put_list(out, items, canonical, inner)?;
            encode(tail, out, canonical, inner)?;
        }
        Term::Tuple(items) => {
            match u8::try_from(items.len()) {
                Ok(n) => out.extend([tag::SMALL_TUPLE, n]),
                Err(_) => {
                    out.push(tag::LARGE_TUPLE);
                    out.extend(len32(items.len())?.to_be_bytes());
                }
            }
            for item in items {
                encode(item, out, canonical, inner)?;
            }
        }
        Term::Map(entries) => {
            out.push(tag::MAP);
            out.extend(len32(entries.len())?.to_be_bytes());
            if canonical {
                let mut encoded = entries
                    .iter()
                    .map(|(k, v)| {
                        let (mut key, mut value) = (Vec::new(), Vec::new());
                        encode(k, &mut key, true, inner)?;
                        encode(v, &mut value, true, inner)?;
                        Ok((key, value))
                    })
                    .collect::<Result<Vec<_>, EtfError>>()?;
                encoded.sort();
                for (k, v) in encoded {
                    out.extend(k);
                    out.extend(v);
                }
            } else {
                for (k, v) in entries {
                    encode(k, out, false, inner)?;
                    encode(v, out, false, inner)?;
                }
            }
        }
        Term::Pid {
            node,
            id,
            serial,
            creation,
        } => {
            out.push(tag::NEW_PID);
            put_atom(out, node)?;
            out.extend(id.to_be_bytes());
            out.extend(serial.to_be_bytes());
            out.extend(creation.to_be_bytes());
        }
        Term::Port { node, id, creation } => {
            match u32::try_from(*id) {
                Ok(id) => {
                    out.push(tag::NEW_PORT);
                    put_atom(out, node)?;
                    out.extend(id.to_be_bytes());
                }
                Err(_) => {
                    out.push(tag::V4_PORT);
                    put_atom(out, node)?;
                    out.extend(id.to_be_bytes());
                }
            }
            out.extend(creation.to_be_bytes());
        }
        Term::Reference {
            node,
            creation,
            ids,
        } => {
            if !(1..=5).contains(&ids.len()) {
                return Err(EtfError::Unencodable("a reference has 1-5 words"));
            }
            out.push(tag::NEWER_REFERENCE);
            out.extend((ids.len() as u16).to_be_bytes());
            put_atom(out, node)?;
            out.extend(creation.to_be_bytes());
            for id in ids {
                out.extend(id.to_be_bytes());
            }
        }
        Term::Export {
            module,
            function,
            arity,
        } => {
            out.push(tag::EXPORT);
            put_atom(out, module)?;
            put_atom(out, function)?;
            out.extend([tag::SMALL_INTEGER, *arity]);
        }
    }
    Ok(())
}

fn put_big(out: &mut Vec<u8>, negative: bool, magnitude: &[u8]) {
    match u8::try_from(magnitude.len()) {
        Ok(n) => out.extend([tag::SMALL_BIG, n]),
        Err(_) => {
            out.push(tag::LARGE_BIG);
            out.extend((magnitude.len() as u32).to_be_bytes());
        }
    }
    out.push(u8::from(negative));
    out.extend(magnitude);
}

fn put_atom(out: &mut Vec<u8>, name: &str) -> Result<(), EtfError> {
    if name.chars().count() > MAX_ATOM_CHARS {
        return Err(EtfError::Unencodable("an atom over 255 characters"));
    }
    match u8::try_from(name.len()) {
        Ok(n) => out.extend([tag::SMALL_ATOM_UTF8, n]),
        Err(_) => {
            out.push(tag::ATOM_UTF8);
            out.extend((name.len() as u16).to_be_bytes());
        }
    }
    out.extend(name.as_bytes());
    Ok(())
}

/// `LIST_EXT` with its elements (inside `depth` containers); the caller writes the tail.
fn put_list(
    out: &mut Vec<u8>,
    items: &[Term],
    canonical: bool,
    depth: usize,
) -> Result<(), EtfError> {
    out.push(tag::LIST);
    let n = u32::try_from(items.len()).map_err(|_| EtfError::Unencodable("over 2^32 items"))?;
    out.extend(n.to_be_bytes());
    for item in items {
        encode(item, out, canonical, depth)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
