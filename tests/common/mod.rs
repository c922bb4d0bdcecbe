//! Shared test helpers: the real binary, fresh keys and repositories, and
//! the S3-compatible server started by `scripts/test-servers`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use rand::{RngCore, SeedableRng};

pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lifeboat"));
    // Tests must not pick up a developer's environment.
    for v in ["LIFEBOAT_REPO", "LIFEBOAT_IDENTITY_FILE", "LIFEBOAT_WRITE_KEY_FILE", "LIFEBOAT_LOG"] {
        c.env_remove(v);
    }
    c
}

pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("spawn lifeboat")
}

pub fn run_stdin(args: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    let mut child =
        bin().args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let t = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    t.join().unwrap();
    out
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[track_caller]
pub fn ok(o: &Output) -> String {
    assert!(o.status.success(), "command failed: {:?}\nstdout: {}\nstderr: {}", o.status, stdout(o), stderr(o));
    stdout(o)
}

/// A fresh identity + write credential + repository.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub identity: PathBuf,
    pub write_key: PathBuf,
    pub recipient: String,
    pub repo: String,
}

impl Fixture {
    /// A repository in a local directory.
    pub fn local() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo").display().to_string();
        Self::with_repo(dir, repo)
    }

    /// A repository in a new bucket on the test S3 server.
    pub fn s3() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let bucket = new_bucket("us-east-1");
        let repo = s3_url(&bucket, "us-east-1", "repo");
        Self::with_repo(dir, repo)
    }

    pub fn with_repo(dir: tempfile::TempDir, repo: String) -> Fixture {
        let identity = dir.path().join("id.key");
        let write_key = dir.path().join("write.key");
        let out = run(&["key", "generate", "--output", identity.to_str().unwrap()]);
        let recipient = ok(&out).trim().to_string();
        assert!(recipient.starts_with("age1"), "{recipient}");
        ok(&run(&["init", "--repo", &repo, "--recipient", &recipient, "--write-key-out", write_key.to_str().unwrap()]));
        Fixture { dir, identity, write_key, recipient, repo }
    }

    pub fn id(&self) -> &str {
        self.identity.to_str().unwrap()
    }
    pub fn wk(&self) -> &str {
        self.write_key.to_str().unwrap()
    }

    /// Back up bytes with the write credential; returns the snapshot id.
    pub fn backup(&self, name: &str, data: &[u8]) -> String {
        let out =
            run_stdin(&["backup", "--repo", &self.repo, "--write-key", self.wk(), "--stdin", "--name", name], data);
        ok(&out).trim().to_string()
    }

    pub fn backup_json(&self, name: &str, data: &[u8]) -> serde_json::Value {
        let out = run_stdin(
            &["--json", "backup", "--repo", &self.repo, "--write-key", self.wk(), "--stdin", "--name", name],
            data,
        );
        serde_json::from_str(&ok(&out)).unwrap()
    }

    pub fn restore(&self, snapshot: &str) -> Vec<u8> {
        let out = run(&["restore", "--repo", &self.repo, "--identity", self.id(), snapshot, "--to", "-"]);
        ok(&out);
        out.stdout
    }

    pub fn repo_path(&self) -> PathBuf {
        PathBuf::from(&self.repo)
    }
}

/// Deterministic pseudo-random bytes.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

/// Alternating blocks of random and repetitive data.
pub fn mixed_data(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut i = 0u64;
    while out.len() < len {
        let block = 1 << 20;
        if i.is_multiple_of(2) {
            out.extend_from_slice(&random_bytes(seed + i, block));
        } else {
            let line = format!("INSERT INTO t VALUES ({i}, 'repetitive row text {}');\n", i % 7);
            let target = out.len() + block;
            while out.len() < target {
                out.extend_from_slice(line.as_bytes());
            }
        }
        i += 1;
    }
    out.truncate(len);
    out
}

/// A compressible text "dump": rows with varied numbers and words.
pub fn text_dump(seed: u64, len: usize) -> Vec<u8> {
    let words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"];
    let r = random_bytes(seed, len / 8 + 64);
    let mut out = Vec::with_capacity(len + 128);
    out.extend_from_slice(b"COPY public.orders (id, customer, status, note) FROM stdin;\n");
    let mut i = 0usize;
    while out.len() < len {
        let a = r[i % r.len()] as usize;
        let b = r[(i * 7 + 3) % r.len()] as usize;
        out.extend_from_slice(
            format!("{i}\t{}\t{}\t{} {} {}\n", a * 131 + b, words[a % 10], words[b % 10], words[(a + b) % 10], a ^ b)
                .as_bytes(),
        );
        i += 1;
    }
    out.truncate(len);
    out
}

/// Size of every file under a directory, by relative path (to prove "nothing changed").
pub fn tree_state(dir: &Path) -> Vec<(String, u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let data = std::fs::read(&p).unwrap_or_default();
                out.push((p.strip_prefix(dir).unwrap().display().to_string(), data.len() as u64, sha(&data)));
            }
        }
    }
    out.sort();
    out
}

pub fn sha(data: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(data).to_vec()
}

pub fn du(dir: &Path) -> u64 {
    tree_state(dir).iter().map(|(_, s, _)| s).sum()
}

// ---- S3 test server ----

pub fn s3_endpoint() -> String {
    std::env::var("LIFEBOAT_TEST_S3_ENDPOINT").expect(
        "LIFEBOAT_TEST_S3_ENDPOINT is not set: run the tests with scripts/test, which starts the S3 test server",
    )
}

pub fn s3_url(bucket: &str, region: &str, prefix: &str) -> String {
    format!("s3://{bucket}/{prefix}?region={region}&endpoint={}&allow_http=true", s3_endpoint())
}

pub async fn s3_client(region: &str) -> aws_sdk_s3::Client {
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new(region.to_string()))
        .load()
        .await;
    let c = aws_sdk_s3::config::Builder::from(&conf).endpoint_url(s3_endpoint()).force_path_style(true).build();
    aws_sdk_s3::Client::from_conf(c)
}

/// Create a uniquely named bucket; returns its name.
pub fn new_bucket(region: &str) -> String {
    let name = format!("lb-test-{}", hex::encode(rand::random::<[u8; 6]>()));
    let (n, region) = (name.clone(), region.to_string());
    // Own thread and runtime, so async tests can call it too.
    std::thread::spawn(move || create_bucket(&n, &region)).join().unwrap();
    name
}

fn create_bucket(name: &str, region: &str) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let c = s3_client(region).await;
        let mut req = c.create_bucket().bucket(name);
        if region != "us-east-1" {
            req = req.create_bucket_configuration(
                aws_sdk_s3::types::CreateBucketConfiguration::builder()
                    .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(region))
                    .build(),
            );
        }
        req.send().await.expect("create bucket on the test S3 server");
    });
}

/// Keys under `prefix` in a test bucket.
pub fn s3_keys(bucket: &str, region: &str, prefix: &str) -> Vec<String> {
    let (b, r, p) = (bucket.to_string(), region.to_string(), prefix.to_string());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let c = s3_client(&r).await;
            let mut out = Vec::new();
            let mut token = None;
            loop {
                let resp = c
                    .list_objects_v2()
                    .bucket(&b)
                    .prefix(&p)
                    .set_continuation_token(token.clone())
                    .send()
                    .await
                    .unwrap();
                out.extend(resp.contents().iter().filter_map(|o| o.key().map(str::to_string)));
                token = resp.next_continuation_token().map(str::to_string);
                if token.is_none() {
                    break;
                }
            }
            out
        })
    })
    .join()
    .unwrap()
}

/// Flip one byte in the middle of an object in a test bucket (same size, so replication will not repair it).
pub fn s3_flip_byte(bucket: &str, region: &str, key: &str) {
    let (b, r, k) = (bucket.to_string(), region.to_string(), key.to_string());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let c = s3_client(&r).await;
            let obj = c.get_object().bucket(&b).key(&k).send().await.unwrap();
            let mut data = obj.body.collect().await.unwrap().into_bytes().to_vec();
            let mid = data.len() / 2;
            data[mid] ^= 0x55;
            c.put_object().bucket(&b).key(&k).body(data.into()).send().await.unwrap();
        })
    })
    .join()
    .unwrap()
}

/// A one-purpose HTTP server: records (method, path, body) of each request.
pub fn http_sink() -> (String, std::sync::mpsc::Receiver<(String, String, String)>) {
    use std::io::{BufRead, Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", l.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in l.incoming().take(20) {
            let Ok(mut c) = conn else { continue };
            let mut r = std::io::BufReader::new(c.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let mut parts = line.split_whitespace();
            let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
            let mut len = 0;
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            let _ = c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = tx.send((method, path, String::from_utf8_lossy(&body).to_string()));
        }
    });
    (addr, rx)
}

// PostgreSQL test server (scripts/test-servers).
pub fn pg_url() -> String {
    std::env::var("LIFEBOAT_TEST_PG_URL").expect("LIFEBOAT_TEST_PG_URL is not set: run the tests with scripts/test")
}
pub fn pg_bin() -> String {
    std::env::var("LIFEBOAT_TEST_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into())
}
pub fn url_for(db: &str) -> String {
    let base = pg_url();
    let (root, _) = base.rsplit_once('/').unwrap();
    format!("{root}/{db}")
}
/// psql as the test superuser; returns trimmed stdout, panics on error.
pub fn psql(db: &str, sql: &str) -> String {
    let out = Command::new(format!("{}/psql", pg_bin()))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-t", "-A", "-d", &url_for(db), "-c", sql])
        .output()
        .unwrap();
    assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

// TLS certificates for the TLS tests (openssl from scripts/install-deps).
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl must be installed");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// openssl arguments for a new unencrypted P-256 key.
const EC_KEY: [&str; 5] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

/// A self-signed CA `name` (`name.crt`, `name.key` in `dir`).
pub fn make_ca(dir: &Path, name: &str) {
    let (key, crt, subj) = (format!("{name}.key"), format!("{name}.crt"), format!("/CN={name}"));
    let mut args = vec!["req", "-x509"];
    args.extend(EC_KEY);
    args.extend(["-keyout", &key, "-out", &crt, "-days", "2", "-subj", &subj]);
    openssl(dir, &args);
}

/// A certificate `leaf` signed by CA `ca`; `ext` is its openssl extension file.
pub fn make_leaf(dir: &Path, ca: &str, leaf: &str, ext: &str) {
    std::fs::write(dir.join(format!("{leaf}.ext")), ext).unwrap();
    let (key, csr, subj) = (format!("{leaf}.key"), format!("{leaf}.csr"), format!("/CN={leaf}"));
    let mut args = vec!["req"];
    args.extend(EC_KEY);
    args.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
    openssl(dir, &args);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{leaf}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{leaf}.crt"),
            "-days",
            "2",
            "-extfile",
            &format!("{leaf}.ext"),
        ],
    );
}
