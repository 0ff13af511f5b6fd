//! The Erlang term decoder (`binary_to_term`) on arbitrary bytes: no panic, and every term
//! it accepts encodes, decodes back to the same canonical form, and hashes.
#![no_main]

use headwaters_amqp_consumer::etf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Vec::with_capacity(data.len() + 1);
    input.push(131);
    input.extend_from_slice(data);
    if let Ok(term) = etf::decode(&input) {
        let canonical = term.to_canonical_etf().expect("a decoded term encodes");
        let again = etf::decode(&canonical).expect("our encoding decodes");
        assert_eq!(again.to_canonical_etf().unwrap(), canonical);
        assert_eq!(etf::hash32(&again), etf::hash32(&term));
    }
});
