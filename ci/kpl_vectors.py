"""Generate KPL aggregation vectors with the third-party aggregator (`pip install
aws-kinesis-agg`): each line is one Kinesis record's data and what the KCL makes of it.

    python3 ci/kpl_vectors.py > crates/kinesis/tests/data/kpl_vectors.txt

Line format (tab-separated): kind, record data (hex), then one field per user record
`partition_key|explicit_hash_key or -|data hex`. kind is `aggregate` (the aggregator's
output: the user records in order), `plain` (not an aggregate, or a damaged one: the KCL
hands the record on whole, so the expected user record is the record itself, with the
partition key `outer`).
"""

import random
import sys

import aws_kinesis_agg.aggregator as agg


def hexs(b):
    return b.hex()


def emit(kind, data, users):
    fields = [kind, hexs(data)]
    for pk, ehk, d in users:
        fields.append("%s|%s|%s" % (pk, ehk if ehk is not None else "-", hexs(d)))
    print("\t".join(fields))


def aggregate(users):
    record = agg.AggRecord()
    for pk, ehk, d in users:
        if not record.add_user_record(pk, d, ehk):
            raise SystemExit("aggregate too large")
    pk, ehk, data = record.get_contents()
    return data


def main():
    rnd = random.Random(20261129)
    keys = ["k%d" % i for i in range(20)] + ["ключ", "鍵", "a" * 256, "x"]
    hashes = [None, None, None, "0", "340282366920938463463374607431768211455",
              str(2 ** 127), str(rnd.getrandbits(128))]
    count = 0
    for n in [1, 2, 3, 10, 100, 300]:
        for _ in range(8 if n < 100 else 2):
            users = []
            for _ in range(n):
                size = rnd.choice([0, 1, 5, 64, 300])
                users.append((rnd.choice(keys), rnd.choice(hashes), bytes(rnd.getrandbits(8) for _ in range(size))))
            data = aggregate(users)
            emit("aggregate", data, users)
            count += 1
            # Damaged copies: the KCL hands them on whole.
            if n <= 10:
                bad_md5 = bytearray(data)
                bad_md5[-1] ^= 0x01
                emit("plain", bytes(bad_md5), [("outer", None, bytes(bad_md5))])
                truncated = data[: len(data) // 2]
                emit("plain", truncated, [("outer", None, truncated)])
                body_flip = bytearray(data)
                body_flip[5] ^= 0xFF
                emit("plain", bytes(body_flip), [("outer", None, bytes(body_flip))])
    # Not aggregates at all.
    for d in [b"", b"\xf3\x89\x9a", b"\xf3\x89\x9a\xc2", b"hello", bytes(range(256)), b"\xf3\x89\x9a\xc2" + b"\x00" * 16]:
        emit("plain", d, [("outer", None, d)])
    print("# %d aggregates" % count, file=sys.stderr)


main()
