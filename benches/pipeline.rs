//! Criterion benches of each backup/restore pipeline stage, on dump-like data.
//!
//! `cargo bench --bench pipeline`. Whole-pipeline comparisons with restic,
//! borg and `zstd | age` live in `scripts/bench-pipeline`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lifeboat::chunker::{ChunkerParams, chunks};
use lifeboat::crypto::{self, DedupKey};

/// Dump-like text: tab-separated rows with varied numbers and words.
fn dump(len: usize) -> Vec<u8> {
    let words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo"];
    let mut out = Vec::with_capacity(len + 256);
    let mut x: u64 = 0x9E3779B97F4A7C15;
    let mut i = 0u64;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let (a, b) = ((x % 11) as usize, ((x >> 8) % 11) as usize);
        out.extend_from_slice(
            format!(
                "{i}\t{}\t{} {}\t{}.{:02}\t{{\"k\": {}}}\n",
                x % 100_000,
                words[a],
                words[b],
                x % 9973,
                x % 100,
                x >> 40
            )
            .as_bytes(),
        );
        i += 1;
    }
    out.truncate(len);
    out
}

fn stages(c: &mut Criterion) {
    let data = dump(64 << 20);
    let chunk = &data[..1 << 20];
    let key = DedupKey::from_bytes([3; 32]);
    let (id_text, rcpt) = crypto::generate_identity();
    let dir = std::env::temp_dir().join(format!("lifeboat-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let id_path = dir.join("id");
    let _ = std::fs::remove_file(&id_path);
    std::fs::write(&id_path, id_text).unwrap();
    let ids = crypto::Identities::from_file(&id_path).unwrap();
    let recipients = vec![crypto::parse_recipient(&rcpt).unwrap()];

    let mut g = c.benchmark_group("stages");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("fastcdc_1MiB_avg", |b| {
        b.iter(|| chunks(&data[..], ChunkerParams::default()).map(|c| c.unwrap().len()).sum::<usize>())
    });
    g.throughput(Throughput::Bytes(chunk.len() as u64));
    g.bench_function("hmac_sha256_chunk_id", |b| b.iter(|| key.chunk_id(chunk)));
    g.bench_function("zstd3_compress", |b| b.iter(|| zstd::bulk::compress(chunk, 3).unwrap()));
    let compressed = zstd::bulk::compress(chunk, 3).unwrap();
    g.bench_function("zstd_decompress", |b| b.iter(|| zstd::bulk::decompress(&compressed, chunk.len()).unwrap()));
    let pack = &data[..16 << 20];
    g.throughput(Throughput::Bytes(pack.len() as u64));
    g.bench_function("age_encrypt_16MiB_pack", |b| b.iter(|| crypto::encrypt(&recipients, pack).unwrap()));
    let ct = crypto::encrypt(&recipients, pack).unwrap();
    g.bench_function("age_decrypt_16MiB_pack", |b| b.iter(|| ids.decrypt("bench", &ct).unwrap()));
    g.bench_function("sha256_pack_name", |b| {
        use sha2::Digest;
        b.iter(|| sha2::Sha256::digest(&ct))
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, stages);
criterion_main!(benches);
