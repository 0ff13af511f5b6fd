//! `erlang:phash2/1,2`: a port of ERTS `make_hash2` (Bob Jenkins' mix over each term's
//! parts, in the order the VM walks them), written from its documented behaviour and
//! checked against `erl` (the vectors in the tests). The VM promises this hash stays the
//! same across releases and platforms, which is why Mississippi can route by it.
//!
//! The walk is iterative (an explicit stack), so a deep term cannot overflow ours.

use super::Term;

/// The golden ratio, and its multiples `HCONST * k mod 2^32` as the VM names them.
const HCONST: u32 = 0x9e37_79b9;
const HCONST_2: u32 = HCONST.wrapping_mul(2);
const HCONST_3: u32 = HCONST.wrapping_mul(3);
const HCONST_4: u32 = HCONST.wrapping_mul(4);
const HCONST_5: u32 = HCONST.wrapping_mul(5);
const HCONST_6: u32 = HCONST.wrapping_mul(6);
const HCONST_7: u32 = HCONST.wrapping_mul(7);
const HCONST_9: u32 = HCONST.wrapping_mul(9);
const HCONST_10: u32 = HCONST.wrapping_mul(10);
const HCONST_11: u32 = HCONST.wrapping_mul(11);
const HCONST_12: u32 = HCONST.wrapping_mul(12);
const HCONST_13: u32 = HCONST.wrapping_mul(13);
const HCONST_14: u32 = HCONST.wrapping_mul(14);
const HCONST_15: u32 = HCONST.wrapping_mul(15);
const HCONST_16: u32 = HCONST.wrapping_mul(16);
const HCONST_19: u32 = HCONST.wrapping_mul(19);
/// What `[]` hashes to when it is the first thing hashed.
const NIL_FIRST: u32 = 3_468_870_702;
/// The VM's type number for `[]` (mixed in when `[]` follows other parts).
const NIL_TYPE: u32 = 2;

/// `erlang:phash2(Term)`: the hash in `0..2^27`.
pub fn phash2(term: &Term) -> u32 {
    hash32(term) & ((1 << 27) - 1)
}

/// `erlang:phash2(Term, Range)` for `range` in `1..=2^32` (a `u64` so that 2^32 itself, the
/// whole hash, can be asked for): the hash in `0..range`. Mississippi's queue index is
/// `phash2_range(key, total_count)`. A range of 0 is treated as 1.
pub fn phash2_range(term: &Term, range: u64) -> u32 {
    let hash = hash32(term);
    match u32::try_from(range) {
        Ok(0) => 0,
        Ok(range) => hash % range,
        Err(_) => hash,
    }
}

/// The VM's full 32-bit `make_hash2` value (`phash2(Term, 1 bsl 32)`).
pub fn hash32(term: &Term) -> u32 {
    let mut h = Hasher {
        hash: 0,
        pairs: 0,
        stack: Vec::new(),
    };
    h.stack.push(Step::Term(term));
    while let Some(step) = h.stack.pop() {
        match step {
            Step::Term(t) => h.term(t),
            Step::Items(items) => {
                if let Some((first, rest)) = items.split_first() {
                    if !rest.is_empty() {
                        h.stack.push(Step::Items(rest));
                    }
                    h.term(first);
                }
            }
            Step::ListRest(items, tail) => h.list(items, tail),
            Step::PairEnd => {
                h.pairs ^= h.hash;
                h.hash = 0;
            }
            Step::MapEnd { hash, pairs } => {
                let xored = h.pairs;
                h.hash = hash;
                h.mix1(xored, HCONST_19);
                h.pairs = pairs;
            }
        }
    }
    h.hash
}

/// What is left to hash, innermost last.
enum Step<'a> {
    Term(&'a Term),
    /// Tuple elements still to hash, in order.
    Items(&'a [Term]),
    /// The rest of a list: elements, then the tail (`None`: `[]`).
    ListRest(&'a [Term], Option<&'a Term>),
    /// A map pair's key and value are hashed: fold it into the pairs' xor.
    PairEnd,
    /// A map's pairs are hashed: mix their xor into the hash saved here.
    MapEnd {
        hash: u32,
        pairs: u32,
    },
}

struct Hasher<'a> {
    hash: u32,
    /// The xor of the hashes of the current map's pairs (order-independent).
    pairs: u32,
    stack: Vec<Step<'a>>,
}

impl<'a> Hasher<'a> {
    /// `UINT32_HASH_2`: mix two words, each offset by `constant`, into the hash.
    fn mix2(&mut self, x: u32, y: u32, constant: u32) {
        let (a, b) = (constant.wrapping_add(x), constant.wrapping_add(y));
        self.hash = mix(a, b, self.hash);
    }

    /// `UINT32_HASH`.
    fn mix1(&mut self, x: u32, constant: u32) {
        self.mix2(x, 0, constant);
    }

    /// An atom's table hash: plain for the first thing hashed, mixed after that.
    fn atom(&mut self, name: &str) {
        let value = atom_hash(name);
        if self.hash == 0 {
            self.hash = value;
        } else {
            self.mix1(value, HCONST_3);
        }
    }

    fn nil(&mut self) {
        if self.hash == 0 {
            self.hash = NIL_FIRST;
        } else {
            self.mix1(NIL_TYPE, HCONST_2);
        }
    }

    fn term(&mut self, term: &'a Term) {
        match term {
            // Integers that fit in 28 signed bits hash as such; all others as bignums, so
            // the value and not the word size decides.
            Term::Int(n) if (-(1 << 27)..(1 << 27)).contains(n) => {
                let y = *n as i32;
                if y < 0 {
                    self.mix1(y.unsigned_abs(), HCONST);
                }
                self.mix1(y as u32, HCONST);
            }
            Term::Int(n) => self.big(*n < 0, &n.unsigned_abs().to_le_bytes()),
            Term::Big(big) => self.big(big.negative, &big.magnitude),
            Term::Float(f) => {
                // -0.0 hashes as 0.0.
                let bits = if *f == 0.0 { 0 } else { f.to_bits() };
                self.mix2((bits >> 32) as u32, bits as u32, HCONST_12);
            }
            Term::Atom(name) => self.atom(name),
            Term::Binary(bytes) => self.binary(bytes, None),
            Term::Bits { bytes, tail_bits } => match bytes.split_last() {
                Some((last, whole)) => self.binary(whole, Some((*last, *tail_bits))),
                None => self.binary(&[], None),
            },
            Term::List(items) if items.is_empty() => self.nil(),
            Term::List(items) => self.list(items, None),
            Term::ImproperList(items, tail) => self.list(items, Some(tail)),
            Term::Tuple(items) => {
                self.mix1(items.len() as u32, HCONST_9);
                if !items.is_empty() {
                    self.stack.push(Step::Items(items));
                }
            }
            Term::Map(entries) => {
                self.mix1(entries.len() as u32, HCONST_16);
                if entries.is_empty() {
                    return;
                }
                self.stack.push(Step::MapEnd {
                    hash: self.hash,
                    pairs: self.pairs,
                });
                self.hash = 0;
                self.pairs = 0;
                // Each pair is hashed from zero, key then value; the order of pairs does
                // not matter (their hashes are xored).
                for (key, value) in entries {
                    self.stack.push(Step::PairEnd);
                    self.stack.push(Step::Term(value));
                    self.stack.push(Step::Term(key));
                }
            }
            Term::Pid { id, .. } => self.mix1(*id, HCONST_5),
            Term::Port { id, .. } => self.mix1(*id as u32, HCONST_6),
            Term::Reference { ids, .. } => self.mix1(ids.first().copied().unwrap_or(0), HCONST_7),
            Term::Export {
                module,
                function,
                arity,
            } => {
                self.mix2(u32::from(*arity), atom_hash(module), HCONST);
                self.mix1(atom_hash(function), HCONST_14);
            }
        }
    }

    /// A list from `items` on: runs of byte-sized integers are packed four to a word (the
    /// VM's string optimisation); any other element is hashed as a term, then the rest.
    fn list(&mut self, items: &'a [Term], tail: Option<&'a Term>) {
        let mut run = 0;
        let (mut packed, mut count) = (0u32, 0);
        while let Some(Term::Int(b @ 0..=255)) = items.get(run) {
            packed = (packed << 8).wrapping_add(*b as u32);
            if count == 3 {
                self.mix1(packed, HCONST_4);
                (packed, count) = (0, 0);
            } else {
                count += 1;
            }
            run += 1;
        }
        if count > 0 {
            self.mix1(packed, HCONST_4);
        }
        match items.get(run) {
            Some(head) => {
                self.stack.push(Step::ListRest(&items[run + 1..], tail));
                self.term(head);
            }
            None => match tail {
                Some(tail) => self.term(tail),
                None => self.nil(),
            },
        }
    }

    /// A bignum: its magnitude as 32-bit words, two at a time (zero-padded).
    fn big(&mut self, negative: bool, magnitude_le: &[u8]) {
        let constant = if negative { HCONST_10 } else { HCONST_11 };
        let len = magnitude_le
            .iter()
            .rposition(|b| *b != 0)
            .map_or(0, |i| i + 1);
        let word = |i: usize| {
            let mut w = [0u8; 4];
            for (k, slot) in w.iter_mut().enumerate() {
                *slot = magnitude_le.get(i * 4 + k).copied().unwrap_or(0);
            }
            u32::from_le_bytes(w)
        };
        let words = len.div_ceil(4).max(1);
        for pair in 0..words.div_ceil(2) {
            self.mix2(word(pair * 2), word(pair * 2 + 1), constant);
        }
    }

    /// A binary (or bit string, with its partial last byte and bit count).
    fn binary(&mut self, whole: &[u8], partial: Option<(u8, u8)>) {
        let constant = HCONST_13.wrapping_add(self.hash);
        if whole.is_empty() && partial.is_none() {
            self.hash = constant;
            return;
        }
        self.hash = block_hash(whole, constant);
        if let Some((last, bits)) = partial {
            self.mix2(u32::from(bits), u32::from(last >> (8 - bits)), HCONST_15);
        }
    }
}

/// Bob Jenkins' 96-bit mix; returns the mixed `c`.
fn mix(a: u32, b: u32, c: u32) -> u32 {
    mix3(a, b, c).2
}

/// Jenkins' hash of `bytes`, seeded with `seed`: 12 bytes (three little-endian words) at a
/// time, then the rest with the length in `c`'s low byte.
fn block_hash(bytes: &[u8], seed: u32) -> u32 {
    let (mut a, mut b, mut c) = (HCONST, HCONST, seed);
    let word = |chunk: &[u8]| {
        let mut w = [0u8; 4];
        w[..chunk.len()].copy_from_slice(chunk);
        u32::from_le_bytes(w)
    };
    let mut blocks = bytes.chunks_exact(12);
    for block in &mut blocks {
        a = a.wrapping_add(word(&block[0..4]));
        b = b.wrapping_add(word(&block[4..8]));
        c = c.wrapping_add(word(&block[8..12]));
        let (x, y, z) = mix3(a, b, c);
        (a, b, c) = (x, y, z);
    }
    let rest = blocks.remainder();
    c = c.wrapping_add(bytes.len() as u32);
    a = a.wrapping_add(word(&rest[..rest.len().min(4)]));
    if rest.len() > 4 {
        b = b.wrapping_add(word(&rest[4..rest.len().min(8)]));
    }
    if rest.len() > 8 {
        // `c`'s first byte holds the length: the last bytes go above it.
        c = c.wrapping_add(word(&rest[8..]) << 8);
    }
    mix3(a, b, c).2
}

/// The mix, returning all three words (`block_hash` carries them between blocks).
fn mix3(mut a: u32, mut b: u32, mut c: u32) -> (u32, u32, u32) {
    a = a.wrapping_sub(b).wrapping_sub(c) ^ (c >> 13);
    b = b.wrapping_sub(c).wrapping_sub(a) ^ (a << 8);
    c = c.wrapping_sub(a).wrapping_sub(b) ^ (b >> 13);
    a = a.wrapping_sub(b).wrapping_sub(c) ^ (c >> 12);
    b = b.wrapping_sub(c).wrapping_sub(a) ^ (a << 16);
    c = c.wrapping_sub(a).wrapping_sub(b) ^ (b >> 5);
    a = a.wrapping_sub(b).wrapping_sub(c) ^ (c >> 3);
    b = b.wrapping_sub(c).wrapping_sub(a) ^ (a << 10);
    c = c.wrapping_sub(a).wrapping_sub(b) ^ (b >> 15);
    (a, b, c)
}

/// The VM's atom-table hash (hashpjw over the name's UTF-8 bytes, where a two-byte
/// sequence for a Latin-1 character counts as that one character, so atoms hash as they
/// did when atoms were Latin-1).
fn atom_hash(name: &str) -> u32 {
    let bytes = name.as_bytes();
    let mut h: u32 = 0;
    let mut i = 0;
    while i < bytes.len() {
        let mut v = u32::from(bytes[i]);
        i += 1;
        if (v & 0xfe) == 0xc2 && bytes.get(i).is_some_and(|n| n & 0xc0 == 0x80) {
            v = ((v << 6) | u32::from(bytes[i] & 0x3f)) & 0xff;
            i += 1;
        }
        h = (h << 4).wrapping_add(v);
        let g = h & 0xf000_0000;
        if g != 0 {
            h ^= g >> 24;
            h ^= g;
        }
    }
    h
}
