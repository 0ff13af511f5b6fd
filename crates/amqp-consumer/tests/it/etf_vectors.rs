//! The Erlang-term codec and the phash2 port against vectors the real VM wrote
//! (`ci/etf_vectors.erl`): every term decodes from all three encodings to one canonical
//! term, hashes as the VM hashed it, and encodes back to the VM's bytes.

use std::path::{Path, PathBuf};

use headwaters_amqp_consumer::etf::{self, Term};

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn has_map(t: &Term) -> bool {
    match t {
        Term::Map(_) => true,
        Term::List(items) | Term::Tuple(items) => items.iter().any(has_map),
        Term::ImproperList(items, tail) => items.iter().any(has_map) || has_map(tail),
        _ => false,
    }
}

/// Check every line of `file`; returns how many were checked.
fn check(file: &Path) -> usize {
    let text = std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
    let mut checked = 0;
    for (n, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields.len(), 9, "line {}: {line:.80}", n + 1);
        let [default, v2, v0] = [0, 1, 2].map(|i| unhex(fields[i]));
        let hashes: Vec<u32> = fields[3..].iter().map(|h| h.parse().unwrap()).collect();
        let term =
            etf::decode(&default).unwrap_or_else(|e| panic!("line {}: {e}: {}", n + 1, fields[0]));
        let canonical = term.to_canonical_etf().unwrap();
        for (name, bytes) in [("minor_version 2", &v2), ("minor_version 0", &v0)] {
            let other =
                etf::decode(bytes).unwrap_or_else(|e| panic!("line {} ({name}): {e}", n + 1));
            assert_eq!(
                other.to_canonical_etf().unwrap(),
                canonical,
                "line {}: the {name} encoding is another term",
                n + 1
            );
        }
        let what = || format!("line {}: {term:?}", n + 1);
        assert_eq!(etf::hash32(&term), hashes[0], "{}", what());
        assert_eq!(etf::phash2(&term), hashes[1], "{}", what());
        for (range, expected) in [7, 16, 128, 1000].into_iter().zip(&hashes[2..]) {
            assert_eq!(
                etf::phash2_range(&term, range),
                *expected,
                "range {range}: {}",
                what()
            );
        }
        // The VM orders small maps its own way; everything else encodes byte for byte.
        if !has_map(&term) {
            assert_eq!(term.to_etf().unwrap(), v2, "{}", what());
        }
        checked += 1;
    }
    checked
}

#[test]
fn committed_vectors_from_erl() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/etf_vectors.txt");
    let checked = check(&file);
    assert!(checked >= 2000, "only {checked} vectors");
}

#[test]
#[ignore = "needs Erlang (escript; installed with RabbitMQ by cargo xtask integration)"]
fn fresh_vectors_from_this_machines_erl() {
    let script: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ci/etf_vectors.erl");
    let out = std::env::temp_dir().join(format!("etf_vectors_{}.txt", std::process::id()));
    let status = std::process::Command::new("escript")
        .arg(&script)
        .arg(&out)
        .status()
        .expect("escript (Erlang) is needed: apt-get install erlang-base, or run cargo xtask integration");
    assert!(status.success(), "{} failed: {status}", script.display());
    let checked = check(&out);
    let _ = std::fs::remove_file(&out);
    println!("{checked} vectors from this machine's erl match");
    assert!(checked >= 2000, "only {checked} vectors");
}
