//! etcd snapshots against a real etcd (Debian's etcd-server): the one
//! scripts/test-servers starts, and throwaway members these tests start
//! themselves (a restored member; a TLS member with client-certificate auth).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use etcd_client::{Client, ConnectOptions, GetOptions, Txn, TxnOp};
use serde_json::Value;

fn endpoint() -> String {
    std::env::var("LIFEBOAT_TEST_ETCD_ENDPOINT")
        .expect("LIFEBOAT_TEST_ETCD_ENDPOINT is not set: run the tests with scripts/test")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

async fn connect(ep: &str) -> Client {
    let o = ConnectOptions::new().with_connect_timeout(Duration::from_secs(5)).with_timeout(Duration::from_secs(30));
    Client::connect([ep], Some(o)).await.unwrap_or_else(|e| panic!("connect {ep}: {e}"))
}

async fn dump_prefix(c: &mut Client, prefix: &str) -> (BTreeMap<Vec<u8>, Vec<u8>>, i64) {
    let r = c.get(prefix, Some(GetOptions::new().with_prefix())).await.unwrap();
    let rev = r.header().unwrap().revision();
    (r.kvs().iter().map(|kv| (kv.key().to_vec(), kv.value().to_vec())).collect(), rev)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An etcd member of our own, killed on drop.
struct Etcd {
    child: Child,
    endpoint: String,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_etcd(data_dir: &Path, scheme: &str, extra: &[String]) -> Etcd {
    let port = free_port();
    let peer = free_port();
    let endpoint = format!("{scheme}://127.0.0.1:{port}");
    let log = std::fs::File::create(data_dir.with_extension("log")).unwrap();
    let child = Command::new("etcd")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--name=default")
        .arg(format!("--listen-client-urls={endpoint}"))
        .arg(format!("--advertise-client-urls={endpoint}"))
        .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
        .arg(format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"))
        .arg(format!("--initial-cluster=default=http://127.0.0.1:{peer}"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("etcd (Debian: etcd-server) must be installed");
    Etcd { child, endpoint }
}

fn wait_tcp(ep: &str, etcd: &mut Etcd, log: &Path) {
    let addr = ep.split("://").nth(1).unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(&addr).is_err() {
        if let Ok(Some(s)) = etcd.child.try_wait() {
            panic!("etcd exited with {s}: {}", std::fs::read_to_string(log).unwrap_or_default());
        }
        assert!(Instant::now() < deadline, "etcd did not listen: {}", std::fs::read_to_string(log).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn etcd_policy(f: &Fixture, body: &str) -> PathBuf {
    let p = f.dir.path().join("policy.toml");
    std::fs::write(
        &p,
        format!(
            "[[repository]]\nname = \"local\"\nurl = \"{}\"\n\n[[job]]\nname = \"etcd\"\nkind = \"etcd\"\n{body}\n",
            f.repo
        ),
    )
    .unwrap();
    p
}

fn snapshot_source(f: &Fixture, id: &str) -> Value {
    let out = run(&["--json", "snapshots", "--repo", &f.repo, "--identity", f.id()]);
    let list: Vec<Value> = serde_json::from_str(&ok(&out)).unwrap();
    list.into_iter().find(|m| m["id"] == id).unwrap()["source"].clone()
}

#[test]
fn snapshot_of_10k_keys_restores_into_a_new_member_with_every_key_and_value() {
    let rt = rt();
    let prefix = format!("/lifeboat-test/{}/", hex::encode(random_bytes(std::process::id() as u64, 6)));
    // 10k keys, values of varied sizes, some binary.
    let mut want: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for i in 0..10_000u64 {
        let key = format!("{prefix}key-{i:05}").into_bytes();
        let mut value = format!("value {i} ").into_bytes();
        value.extend(random_bytes(i, (i % 300) as usize));
        want.insert(key, value);
    }
    let written_rev = rt.block_on(async {
        let mut c = connect(&endpoint()).await;
        let items: Vec<_> = want.iter().collect();
        let mut rev = 0;
        for batch in items.chunks(100) {
            let ops: Vec<TxnOp> = batch.iter().map(|(k, v)| TxnOp::put(k.to_vec(), v.to_vec(), None)).collect();
            let r = c.txn(Txn::new().and_then(ops)).await.unwrap();
            rev = r.header().unwrap().revision();
        }
        rev
    });

    let f = Fixture::local();
    let pol = etcd_policy(&f, &format!("endpoints = [\"{}\"]", endpoint()));
    let out = run(&["--json", "backup", "--policy", pol.to_str().unwrap(), "etcd", "--write-key", f.wk()]);
    let b: Value = serde_json::from_str(&ok(&out)).unwrap();
    let id = b["id"].as_str().unwrap().to_string();
    let src = snapshot_source(&f, &id);
    assert!(src["revision"].as_i64().unwrap() >= written_rev, "{src}");
    assert!(src["keys"].as_i64().unwrap() >= 10_000, "{src}");
    assert_eq!(src["sha256"].as_str().unwrap().len(), 64, "{src}");
    assert!(src["version"].as_str().unwrap().starts_with("3."), "{src}");
    assert!(src["db_size"].as_i64().unwrap() > 0);
    eprintln!("--- source metadata: {src}");

    // Restore to a new data dir, start a second etcd from it on other ports.
    let dir = f.dir.path().join("restored");
    let out = run(&["restore", "--repo", &f.repo, "--identity", f.id(), &id, "--to-dir", dir.to_str().unwrap()]);
    ok(&out);
    eprintln!("--- restore:\n{}", stderr(&out));
    assert!(dir.join("member").is_dir(), "{}", stderr(&out));
    let copy = f.dir.path().join("restored-copy");
    assert!(Command::new("cp").arg("-a").arg(&dir).arg(&copy).status().unwrap().success());
    {
        let mut etcd = start_etcd(&dir, "http", &[]);
        let ep = etcd.endpoint.clone();
        wait_tcp(&ep, &mut etcd, &dir.with_extension("log"));
        let (got, rev) = rt.block_on(async {
            let mut c = connect(&ep).await;
            dump_prefix(&mut c, &prefix).await
        });
        assert_eq!(got.len(), 10_000);
        assert!(got == want, "restored keys/values differ");
        assert_eq!(rev, src["revision"].as_i64().unwrap(), "the restored member is at the snapshot's revision");
    }

    // The library check verify uses: a throwaway member on free ports.
    let check = rt.block_on(lifeboat::source::etcd::check_data_dir(&copy, "default")).unwrap();
    assert!(check.keys >= 10_000, "{check:?}");
    assert_eq!(check.keys, src["keys"].as_i64().unwrap());
    assert_eq!(check.revision, src["revision"].as_i64().unwrap());

    // lifeboat verify: restore into a scratch data dir, start a temporary member, compare with the manifest.
    let out = run(&["--json", "verify", "--policy", pol.to_str().unwrap(), "etcd", "--identity", f.id()]);
    let v: Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(v["ok"], true, "{v:#}");
    let keys = v["checks"].as_array().unwrap().iter().find(|c| c["name"] == "keys").unwrap().clone();
    assert!(keys["detail"].as_str().unwrap().contains(&format!("{} keys", src["keys"])), "{keys}");

    // Leave the shared server as we found it.
    rt.block_on(async {
        let mut c = connect(&endpoint()).await;
        c.delete(prefix.as_str(), Some(etcd_client::DeleteOptions::new().with_prefix())).await.unwrap();
    });
}

#[test]
fn tls_etcd_works_with_the_right_credentials_and_fails_clearly_with_wrong_ones() {
    let f = Fixture::local();
    let certs = f.dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    make_ca(&certs, "ca");
    make_ca(&certs, "other-ca");
    make_leaf(&certs, "ca", "server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n");
    make_leaf(&certs, "ca", "client", "extendedKeyUsage=clientAuth\n");
    make_leaf(&certs, "other-ca", "intruder", "extendedKeyUsage=clientAuth\n");
    let c = |n: &str| certs.join(n).display().to_string();
    let data = f.dir.path().join("tls-etcd");
    let mut etcd = start_etcd(
        &data,
        "https",
        &[
            format!("--cert-file={}", c("server.crt")),
            format!("--key-file={}", c("server.key")),
            "--client-cert-auth".into(),
            format!("--trusted-ca-file={}", c("ca.crt")),
        ],
    );
    let ep = etcd.endpoint.clone();
    wait_tcp(&ep, &mut etcd, &data.with_extension("log"));

    let backup = |cacert: &str, cert: &str, key: &str| {
        let pol = etcd_policy(
            &f,
            &format!(
                "endpoints = [\"{ep}\"]\ncacert = \"{}\"\ncert = \"{}\"\nkey = \"file:{}\"",
                c(cacert),
                c(cert),
                c(key)
            ),
        );
        run(&["--json", "backup", "--policy", pol.to_str().unwrap(), "etcd", "--write-key", f.wk()])
    };
    // The right CA and client certificate: a snapshot (mutual TLS works).
    let deadline = Instant::now() + Duration::from_secs(30);
    let good = loop {
        let o = backup("ca.crt", "client.crt", "client.key");
        if o.status.success() || Instant::now() > deadline {
            break o;
        }
        std::thread::sleep(Duration::from_millis(500)); // the member may still be electing itself
    };
    let b: Value = serde_json::from_str(&ok(&good)).unwrap();
    let src = snapshot_source(&f, b["id"].as_str().unwrap());
    assert!(src["revision"].as_i64().unwrap() >= 1, "{src}");
    assert!(src["snapshot_bytes"].as_u64().unwrap() > 0);

    let key_text = std::fs::read_to_string(certs.join("intruder.key")).unwrap();
    let key_body = key_text.lines().nth(1).unwrap().to_string();
    // A client certificate from another CA: the server refuses the handshake.
    let bad = backup("ca.crt", "intruder.crt", "intruder.key");
    assert_eq!(bad.status.code(), Some(1), "{}", stderr(&bad));
    let err = stderr(&bad);
    eprintln!("--- wrong client certificate:\n{err}");
    assert!(err.contains(&format!("etcd at {ep} did not answer")), "{err}");
    assert!(err.contains("cacert, cert, key") && err.contains("no snapshot was written"), "{err}");
    assert!(!err.contains(&key_body), "the key leaked into the message");
    // The wrong CA: lifeboat refuses the server.
    let bad = backup("other-ca.crt", "client.crt", "client.key");
    assert_eq!(bad.status.code(), Some(1), "{}", stderr(&bad));
    assert!(stderr(&bad).contains(&format!("etcd at {ep} did not answer")), "{}", stderr(&bad));
    // Only the good snapshot exists.
    let list = ok(&run(&["--json", "snapshots", "--repo", &f.repo, "--identity", f.id()]));
    assert_eq!(serde_json::from_str::<Vec<Value>>(&list).unwrap().len(), 1);
}
