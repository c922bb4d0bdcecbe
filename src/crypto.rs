//! Keys and encryption.
//!
//! Three secrets, three powers:
//! - the **identity** (an age X25519 secret key) decrypts everything;
//! - the **dedup secret** (32 random bytes per repository) keys chunk ids
//!   (HMAC-SHA256) so a reader of the bucket cannot test whether a known
//!   plaintext is stored, and derives the **index key** that encrypts the
//!   chunk index (writers need the index to deduplicate);
//! - the **write credential** = dedup secret + repository recipients. It can
//!   add snapshots but decrypts no pack and no manifest: those are encrypted
//!   to the recipients only.
//!
//! All encryption at rest is age (X25519 + ChaCha20-Poly1305).

use std::io::{Read, Write};
use std::path::Path;

use age::secrecy::ExposeSecret;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("cannot read key file {path}: {source}")]
    KeyFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an age identity file (expected a line starting with AGE-SECRET-KEY-1)")]
    NotAnIdentity { path: String },
    #[error(
        "{path} is a write credential: it can add snapshots but never decrypt them; restoring needs the age identity (--identity FILE)"
    )]
    IsWriteCredential { path: String },
    #[error("{path} is not a lifeboat write credential: {reason}")]
    BadWriteCredential { path: String, reason: String },
    #[error("invalid age recipient {0:?} (expected age1…)")]
    BadRecipient(String),
    #[error("none of the given identities can decrypt {what}; use the identity this repository was initialised for")]
    WrongKey { what: String },
    #[error("{what} is corrupt: {detail}")]
    Corrupt { what: String, detail: String },
    #[error("encryption failed: {0}")]
    Encrypt(String),
}

/// 32-byte keyed hash of a chunk's plaintext.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

/// Ids are HMAC or SHA-256 outputs, uniformly random: 8 of their bytes are
/// as good a hash as all 32 (equality still compares all 32). Restore
/// builds and probes maps of a few hundred thousand ids before its first
/// byte, so this is on the RTO.
impl std::hash::Hash for ChunkId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(u64::from_le_bytes([
            self.0[0], self.0[1], self.0[2], self.0[3], self.0[4], self.0[5], self.0[6], self.0[7],
        ]));
    }
}

/// A hasher for maps keyed by [`ChunkId`]: takes the id's 8 bytes as they
/// are (an attacker cannot choose ids without the repository secret, and
/// pack ids are hashes of what was stored).
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not used by ChunkId's Hash; a correct fallback for anything else.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// A map keyed by chunk or pack id.
pub type IdMap<V> = std::collections::HashMap<ChunkId, V, std::hash::BuildHasherDefault<IdHasher>>;

/// Hex digit values; 0xff marks a non-digit.
const HEX: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

impl ChunkId {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    /// Parse 64 hex digits (a table lookup per digit: an index holds
    /// hundreds of thousands of ids, parsed before a restore can start).
    pub fn from_hex(s: &str) -> Option<Self> {
        let s = s.as_bytes();
        if s.len() != 64 {
            return None;
        }
        let mut b = [0u8; 32];
        for (i, pair) in s.chunks_exact(2).enumerate() {
            let (hi, lo) = (HEX[pair[0] as usize], HEX[pair[1] as usize]);
            if (hi | lo) & 0xf0 != 0 {
                return None;
            }
            b[i] = hi << 4 | lo;
        }
        Some(ChunkId(b))
    }
}

impl std::fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", &self.to_hex()[..16])
    }
}

impl Serialize for ChunkId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ChunkId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        ChunkId::from_hex(&s).ok_or_else(|| serde::de::Error::custom("bad chunk id"))
    }
}

/// The per-repository dedup secret.
#[derive(Clone)]
pub struct DedupKey([u8; 32]);

impl std::fmt::Debug for DedupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DedupKey(<redacted>)")
    }
}

impl DedupKey {
    pub fn generate() -> Self {
        DedupKey(rand::random())
    }
    pub fn from_bytes(b: [u8; 32]) -> Self {
        DedupKey(b)
    }
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// HMAC-SHA256 of the chunk plaintext under the dedup secret.
    pub fn chunk_id(&self, data: &[u8]) -> ChunkId {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(data);
        ChunkId(mac.finalize().into_bytes().into())
    }

    /// MAC of a pack's age header (format 3), kept in the pack's encrypted
    /// trailer. The header wraps the pack's file key, and age's AEAD ties
    /// every payload byte to that key, so a pack whose trailer holds this MAC
    /// was written by a holder of the dedup secret (a backup job) or by
    /// someone who could decrypt it: not by a bucket writer who only knows
    /// the public recipients.
    fn pack_header_mac(&self, header: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(b"lifeboat pack header key v1");
        let derived: [u8; 32] = mac.finalize().into_bytes().into();
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&derived).expect("HMAC takes any key length");
        mac.update(header);
        mac
    }

    pub fn pack_mac(&self, header: &[u8]) -> [u8; 32] {
        self.pack_header_mac(header).finalize().into_bytes().into()
    }

    /// Constant-time check of [`DedupKey::pack_mac`].
    pub fn pack_mac_matches(&self, header: &[u8], tag: &[u8]) -> bool {
        self.pack_header_mac(header).verify_slice(tag).is_ok()
    }

    /// The age identity that encrypts the chunk index, derived from the
    /// dedup secret so that both writers and identity holders can read it.
    pub fn index_identity(&self) -> age::x25519::Identity {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(b"lifeboat index key v1");
        let derived: [u8; 32] = mac.finalize().into_bytes().into();
        let hrp = bech32::Hrp::parse("age-secret-key-").expect("valid hrp");
        let encoded = bech32::encode::<bech32::Bech32>(hrp, &derived).expect("32 bytes always encode");
        encoded.to_uppercase().parse().expect("derived key is a valid age identity")
    }
}

pub type Recipient = age::x25519::Recipient;

pub fn parse_recipient(s: &str) -> Result<Recipient, CryptoError> {
    s.trim().parse().map_err(|_| CryptoError::BadRecipient(s.to_string()))
}

/// Identities loaded from an age identity file (`--identity FILE`).
pub struct Identities {
    ids: Vec<Box<dyn age::Identity + Send + Sync>>,
    pub source: String,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identities({} from {})", self.ids.len(), self.source)
    }
}

impl Identities {
    pub fn from_file(path: &Path) -> Result<Self, CryptoError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| CryptoError::KeyFile { path: p.clone(), source: e })?;
        if !text.lines().any(|l| l.trim_start().starts_with("AGE-SECRET-KEY-")) {
            if text.contains(WRITE_CREDENTIAL_KIND) {
                return Err(CryptoError::IsWriteCredential { path: p });
            }
            return Err(CryptoError::NotAnIdentity { path: p });
        }
        let file = age::IdentityFile::from_buffer(text.as_bytes())
            .map_err(|_| CryptoError::NotAnIdentity { path: p.clone() })?;
        let ids = file.into_identities().map_err(|_| CryptoError::NotAnIdentity { path: p.clone() })?;
        Ok(Identities { ids, source: p })
    }

    pub fn from_x25519(id: age::x25519::Identity, source: &str) -> Self {
        Identities { ids: vec![Box::new(id)], source: source.to_string() }
    }

    pub fn decrypt(&self, what: &str, ciphertext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        decrypt_with(self.ids.iter().map(|i| i.as_ref() as &dyn age::Identity), what, ciphertext)
    }
}

fn decrypt_with<'a>(
    ids: impl Iterator<Item = &'a dyn age::Identity>,
    what: &str,
    ciphertext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let corrupt = |d: String| CryptoError::Corrupt { what: what.to_string(), detail: d };
    let dec = age::Decryptor::new_buffered(ciphertext).map_err(|e| corrupt(format!("bad age header: {e}")))?;
    let mut reader = dec.decrypt(ids).map_err(|e| match e {
        age::DecryptError::NoMatchingKeys => CryptoError::WrongKey { what: what.to_string() },
        other => corrupt(other.to_string()),
    })?;
    let mut out = Vec::with_capacity(ciphertext.len());
    reader.read_to_end(&mut out).map_err(|e| corrupt(format!("authentication failed ({e})")))?;
    Ok(out)
}

/// Decrypt with a single x25519 identity (used for the index key).
pub fn decrypt_one(id: &age::x25519::Identity, what: &str, ciphertext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    decrypt_with(std::iter::once(id as &dyn age::Identity), what, ciphertext)
}

/// Length of an age file's header plus its 16-byte payload nonce: every
/// byte before the encrypted payload. The header ends with its MAC line
/// (`--- ` + base64); stanza lines start with `-> ` or are base64, which
/// has no `-`, so the first `\n--- ` is that line.
pub fn age_header_len(ct: &[u8]) -> Option<usize> {
    let mac_line = ct.windows(5).position(|w| w == b"\n--- ")? + 5;
    let end = mac_line + ct[mac_line..].iter().position(|&b| b == b'\n')? + 1 + 16;
    (end <= ct.len()).then_some(end)
}

/// A `Write` whose bytes stay readable while an age writer owns it, and
/// are hashed as they come: age hands over one 64 KiB segment at a time,
/// still in cache, where hashing the finished file read it all back from
/// memory at nearly twice the CPU (perf, 1 GiB backup).
#[derive(Clone, Default)]
struct SharedOut(std::rc::Rc<std::cell::RefCell<Written>>);

#[derive(Default)]
struct Written {
    bytes: Vec<u8>,
    sha256: Sha256,
}

impl Write for SharedOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = self.0.borrow_mut();
        out.bytes.extend_from_slice(buf);
        out.sha256.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An age file and the SHA-256 of its bytes.
pub struct Ciphertext {
    pub bytes: Vec<u8>,
    pub sha256: [u8; 32],
}

/// Encrypt `body` followed by the bytes `tail` makes from the file's own
/// header ([`age_header_len`] bytes): how a pack's trailer comes to carry
/// the MAC of the header it is encrypted under.
pub fn encrypt_with_tail(
    recipients: &[Recipient],
    body: &[u8],
    tail: impl FnOnce(&[u8]) -> Result<Vec<u8>, String>,
) -> Result<Ciphertext, CryptoError> {
    let fail = |e: String| CryptoError::Encrypt(e);
    let enc = age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
        .map_err(|e| fail(e.to_string()))?;
    let out = SharedOut::default();
    out.0.borrow_mut().bytes.reserve(body.len() + 64 * 1024 + body.len() / 4096);
    let mut w = enc.wrap_output(out.clone()).map_err(|e| fail(e.to_string()))?;
    // age writes the header and the payload nonce up front and buffers
    // plaintext, so what is out now is exactly the header.
    let header = out.0.borrow().bytes.clone();
    if age_header_len(&header) != Some(header.len()) {
        return Err(fail("unexpected age header layout".into()));
    }
    w.write_all(body).map_err(|e| fail(e.to_string()))?;
    w.write_all(&tail(&header).map_err(fail)?).map_err(|e| fail(e.to_string()))?;
    w.finish().map_err(|e| fail(e.to_string()))?;
    let Written { bytes, sha256 } = out.0.take();
    Ok(Ciphertext { bytes, sha256: sha256.finalize().into() })
}

/// Encrypt to a set of recipients (age binary format).
pub fn encrypt(recipients: &[Recipient], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let enc = age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
        .map_err(|e| CryptoError::Encrypt(e.to_string()))?;
    let mut out = Vec::with_capacity(plaintext.len() + 256 + plaintext.len() / 4096);
    let mut w = enc.wrap_output(&mut out).map_err(|e| CryptoError::Encrypt(e.to_string()))?;
    w.write_all(plaintext).map_err(|e| CryptoError::Encrypt(e.to_string()))?;
    w.finish().map_err(|e| CryptoError::Encrypt(e.to_string()))?;
    Ok(out)
}

/// A new identity, serialised like `age-keygen` does.
pub fn generate_identity() -> (String, String) {
    let id = age::x25519::Identity::generate();
    let recipient = id.to_public().to_string();
    let text = format!(
        "# created: {}\n# public key: {}\n{}\n",
        crate::clock::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        recipient,
        id.to_string().expose_secret()
    );
    (text, recipient)
}

/// The write credential, as stored in a file (JSON).
#[derive(Clone, Serialize, Deserialize)]
pub struct WriteCredential {
    /// Always "lifeboat-write-credential".
    pub kind: String,
    pub repository_id: String,
    /// Base64 of the dedup secret.
    pub dedup_secret: String,
    pub recipients: Vec<String>,
}

impl std::fmt::Debug for WriteCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WriteCredential(repository {})", self.repository_id)
    }
}

pub const WRITE_CREDENTIAL_KIND: &str = "lifeboat-write-credential";

impl WriteCredential {
    pub fn new(repository_id: &str, key: &DedupKey, recipients: &[String]) -> Self {
        use base64::Engine;
        WriteCredential {
            kind: WRITE_CREDENTIAL_KIND.into(),
            repository_id: repository_id.into(),
            dedup_secret: base64::engine::general_purpose::STANDARD.encode(key.as_bytes()),
            recipients: recipients.to_vec(),
        }
    }

    pub fn from_file(path: &Path) -> Result<Self, CryptoError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| CryptoError::KeyFile { path: p.clone(), source: e })?;
        if text.contains("AGE-SECRET-KEY-") {
            return Err(CryptoError::BadWriteCredential {
                path: p,
                reason: "this is an age identity (restore key), not a write credential; pass it with --identity".into(),
            });
        }
        let c: WriteCredential = serde_json::from_str(&text)
            .map_err(|e| CryptoError::BadWriteCredential { path: p.clone(), reason: e.to_string() })?;
        if c.kind != WRITE_CREDENTIAL_KIND {
            return Err(CryptoError::BadWriteCredential { path: p, reason: format!("unexpected kind {:?}", c.kind) });
        }
        c.dedup_key().map_err(|reason| CryptoError::BadWriteCredential { path: p, reason })?;
        Ok(c)
    }

    pub fn dedup_key(&self) -> Result<DedupKey, String> {
        use base64::Engine;
        let b = base64::engine::general_purpose::STANDARD.decode(&self.dedup_secret).map_err(|e| e.to_string())?;
        let arr: [u8; 32] = b.try_into().map_err(|_| "dedup secret must be 32 bytes".to_string())?;
        Ok(DedupKey(arr))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("serialisable") + "\n"
    }
}

/// Write a secret file with mode 0600, refusing to replace an existing one.
pub fn write_secret_file(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_ids_parse_from_hex_exactly() {
        for _ in 0..100 {
            let id = ChunkId(rand::random());
            assert_eq!(ChunkId::from_hex(&id.to_hex()), Some(id));
            assert_eq!(ChunkId::from_hex(&id.to_hex().to_uppercase()), Some(id));
        }
        let good = "0123456789abcdef".repeat(4);
        assert!(ChunkId::from_hex(&good).is_some());
        for bad in [&good[1..], &format!("{good}0"), &good.replacen('a', "g", 1), &good.replacen('0', " ", 1), ""] {
            assert_eq!(ChunkId::from_hex(bad), None, "{bad:?}");
        }
        // Non-ASCII: never a digit, never a panic.
        assert_eq!(ChunkId::from_hex(&format!("é{}", &good[2..])), None);
    }

    #[test]
    fn roundtrip_and_wrong_key() {
        let (text, rcpt) = generate_identity();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("id");
        std::fs::write(&p, &text).unwrap();
        let ids = Identities::from_file(&p).unwrap();
        let ct = encrypt(&[parse_recipient(&rcpt).unwrap()], b"hello").unwrap();
        assert_eq!(ids.decrypt("x", &ct).unwrap(), b"hello");
        let (_, other) = generate_identity();
        let ct2 = encrypt(&[parse_recipient(&other).unwrap()], b"hello").unwrap();
        assert!(matches!(ids.decrypt("x", &ct2), Err(CryptoError::WrongKey { .. })));
    }

    #[test]
    fn a_tail_can_carry_the_mac_of_its_own_header() {
        let id = age::x25519::Identity::generate();
        let rcpt = id.to_public().to_string();
        let key = DedupKey::generate();
        let mut seen = Vec::new();
        let sealed = encrypt_with_tail(&[parse_recipient(&rcpt).unwrap()], b"body ", |h| {
            seen = h.to_vec();
            Ok(key.pack_mac(h).to_vec())
        })
        .unwrap();
        assert_eq!(sealed.sha256, <[u8; 32]>::from(Sha256::digest(&sealed.bytes)), "hashed as written");
        let ct = sealed.bytes;
        let n = age_header_len(&ct).unwrap();
        assert_eq!(&ct[..n], &seen[..], "the header the tail saw is the file's");
        let pt = decrypt_one(&id, "t", &ct).unwrap();
        assert_eq!(&pt[..5], b"body ");
        assert!(key.pack_mac_matches(&ct[..n], &pt[5..]));
        assert!(!DedupKey::generate().pack_mac_matches(&ct[..n], &pt[5..]), "keyed");
        // The same plaintext under a fresh header no longer matches.
        let again = encrypt(&[parse_recipient(&rcpt).unwrap()], &pt).unwrap();
        assert!(!key.pack_mac_matches(&again[..age_header_len(&again).unwrap()], &pt[5..]));
        assert_eq!(age_header_len(b"age-encryption.org/v1\n-> X25519 abc\n--- mac"), None);
    }

    #[test]
    fn index_identity_is_deterministic_and_keyed() {
        let k = DedupKey::from_bytes([7; 32]);
        let a = k.index_identity().to_public().to_string();
        assert_eq!(a, k.index_identity().to_public().to_string());
        assert_ne!(a, DedupKey::from_bytes([8; 32]).index_identity().to_public().to_string());
        assert_ne!(k.chunk_id(b"a"), DedupKey::from_bytes([8; 32]).chunk_id(b"a"));
    }
}

/// TLS client settings shared by every network source: the system's root
/// certificates, rustls with the ring provider, safe protocol versions.
pub fn tls_client_config() -> Result<rustls::ClientConfig, CryptoError> {
    let roots = native_roots();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CryptoError::Encrypt(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The system's trusted CA certificates (unparsable ones skipped).
fn native_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(c);
    }
    roots
}

/// TLS client settings for PostgreSQL's `sslmode`s (libpq's meanings):
/// `verify` checks the certificate chain against `root_cert` (a PEM bundle)
/// or the system's roots; `check_name` (verify-full) also requires the
/// certificate to name the host. Without `verify` (prefer, require) any
/// certificate is accepted: the connection is encrypted, the peer unproven.
pub fn pg_tls_config(
    verify: bool,
    check_name: bool,
    root_cert: Option<&Path>,
) -> Result<rustls::ClientConfig, CryptoError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| CryptoError::Encrypt(format!("TLS setup: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    match root_cert {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<_, _>>())
                .map_err(|e| CryptoError::Encrypt(format!("sslrootcert {}: {e}", path.display())))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(CryptoError::Encrypt(format!(
                    "sslrootcert {} holds no usable CA certificate (PEM expected)",
                    path.display()
                )));
            }
        }
        None => roots = native_roots(),
    }
    let roots = std::sync::Arc::new(roots);
    let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| CryptoError::Encrypt(format!("TLS setup: {e}")))?;
    let cfg = if verify && check_name {
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        let v = PgVerifier { inner: webpki, verify };
        builder.dangerous().with_custom_certificate_verifier(std::sync::Arc::new(v)).with_no_client_auth()
    };
    Ok(cfg)
}

/// verify-ca (`verify`: chain checked, name not) and prefer/require
/// (nothing checked); handshake signatures are always checked.
#[derive(Debug)]
struct PgVerifier {
    inner: std::sync::Arc<rustls::client::WebPkiServerVerifier>,
    verify: bool,
}

impl rustls::client::danger::ServerCertVerifier for PgVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if !self.verify {
            return Ok(rustls::client::danger::ServerCertVerified::assertion());
        }
        match self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
