//! Keys for encryption at rest. A key-encryption key (KEK) wraps one data key per data subject
//! (the person or organisation the data is about); data keys seal stored records with
//! XChaCha20-Poly1305. Destroying a subject's wrapped data key, and the KEK that wrapped it in
//! older backups, is how msec erases a subject without touching its append-only log.
//!
//! This crate owns key material, the AEAD calls, and how every private file of msec is written
//! (`write_private`: keys, key seeds, exports, witness state). It never touches a database,
//! never logs or prints a key (`Debug` is redacted), and uses the RustCrypto AEAD unchanged.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use zeroize::Zeroizing;

const NONCE_LEN: usize = 24;
const FILE_FORMAT: &str = "msec-keyring/v1";

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("key material: {0}")]
    Keys(String),
    #[error("cannot decrypt: wrong key or tampered ciphertext")]
    Decrypt,
    #[error("{0}")]
    ReadOnly(String),
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // The OS generator only fails on a broken platform; running on without keys is worse.
    getrandom::fill(&mut b).expect("the operating system's random generator failed");
    b
}

/// Seals `plaintext` under `key`, binding `aad`: output is nonce (24 bytes) || ciphertext || tag.
fn seal(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(key.into());
    // 192-bit random nonces never collide in practice, so no nonce state has to be kept.
    let nonce = random::<NONCE_LEN>();
    let mut out = nonce.to_vec();
    let ct = cipher
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .expect("XChaCha20-Poly1305 encrypts any message under 256 GiB");
    out.extend_from_slice(&ct);
    out
}

fn open(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, VaultError> {
    if sealed.len() < NONCE_LEN + 16 {
        return Err(VaultError::Decrypt);
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    let nonce = XNonce::try_from(nonce).map_err(|_| VaultError::Decrypt)?;
    XChaCha20Poly1305::new(key.into())
        .decrypt(&nonce, Payload { msg: ct, aad })
        .map_err(|_| VaultError::Decrypt)
}

/// A subject's data key, in memory only while needed (zeroed on drop).
#[derive(Clone)]
pub struct DataKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    pub fn generate() -> DataKey {
        DataKey(Zeroizing::new(random()))
    }
    /// Encrypts a record; `aad` names what the record is (kind and id), so a ciphertext moved
    /// to another row no longer decrypts.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        seal(&self.0, aad, plaintext)
    }
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, VaultError> {
        open(&self.0, aad, sealed)
    }
}

fn wrap_aad(subject: &str, kek_id: &str) -> Vec<u8> {
    format!("msec-dek/v1\n{subject}\n{kek_id}").into_bytes()
}

/// One key-encryption key.
#[derive(Clone, Serialize, Deserialize)]
struct Kek {
    id: String,
    #[serde(with = "hex_key")]
    key: Zeroizing<[u8; 32]>,
    created_ms: i64,
}

mod hex_key {
    use serde::{Deserialize, Deserializer, Serializer};
    use zeroize::Zeroizing;
    pub fn serialize<S: Serializer>(k: &Zeroizing<[u8; 32]>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(&k[..]))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Zeroizing<[u8; 32]>, D::Error> {
        let text = Zeroizing::new(String::deserialize(d)?);
        let mut key = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.as_bytes(), &mut key[..])
            .map_err(|_| serde::de::Error::custom("a key is 64 hex digits"))?;
        Ok(key)
    }
}

/// The KEKs in use: the current one wraps new data keys; previous ones exist only while a
/// rotation is re-wrapping (they are destroyed when it finishes).
#[derive(Clone, Serialize, Deserialize)]
pub struct KeyRing {
    format: String,
    current: Kek,
    #[serde(default)]
    previous: Vec<Kek>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KeyRing(current {:?}, {} previous)",
            self.current.id,
            self.previous.len()
        )
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn new_kek() -> Kek {
    Kek {
        id: format!("kek-{}", hex::encode(random::<6>())),
        key: Zeroizing::new(random()),
        created_ms: now_ms(),
    }
}

impl KeyRing {
    pub fn generate() -> KeyRing {
        KeyRing {
            format: FILE_FORMAT.into(),
            current: new_kek(),
            previous: Vec::new(),
        }
    }

    pub fn current_id(&self) -> &str {
        &self.current.id
    }

    pub fn previous_ids(&self) -> Vec<String> {
        self.previous.iter().map(|k| k.id.clone()).collect()
    }

    /// Wraps a subject's data key under the current KEK; returns (KEK id, wrapped bytes).
    pub fn wrap(&self, subject: &str, dek: &DataKey) -> (String, Vec<u8>) {
        let k = &self.current;
        (
            k.id.clone(),
            seal(&k.key, &wrap_aad(subject, &k.id), &dek.0[..]),
        )
    }

    pub fn unwrap(
        &self,
        subject: &str,
        kek_id: &str,
        wrapped: &[u8],
    ) -> Result<DataKey, VaultError> {
        let kek = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == kek_id)
            .ok_or_else(|| {
                VaultError::Keys(format!(
                    "the key ring has no key {kek_id:?} (destroyed by a rotation or erasure, or the wrong key file)"
                ))
            })?;
        let raw = Zeroizing::new(open(&kek.key, &wrap_aad(subject, kek_id), wrapped)?);
        let key: [u8; 32] = raw.as_slice().try_into().map_err(|_| VaultError::Decrypt)?;
        Ok(DataKey(Zeroizing::new(key)))
    }

    /// Starts a rotation: a fresh current KEK, the old one kept until re-wrapping is done.
    pub fn begin_rotation(&mut self) {
        let old = std::mem::replace(&mut self.current, new_kek());
        self.previous.push(old);
    }

    /// Destroys every previous KEK: data keys wrapped under them (in backups, say) are gone.
    pub fn finish_rotation(&mut self) {
        self.previous.clear();
    }

    fn check(self) -> Result<KeyRing, VaultError> {
        if self.format != FILE_FORMAT {
            return Err(VaultError::Keys(format!(
                "unknown key ring format {:?} (expected {FILE_FORMAT})",
                self.format
            )));
        }
        Ok(self)
    }
}

/// Where the KEKs live. A file is the default; a KMS or HSM plugs in here by implementing
/// `load` and `save` against its own API.
pub trait KekProvider: Send + Sync {
    /// Where the keys come from, for messages (never the keys).
    fn describe(&self) -> String;
    fn load(&self) -> Result<KeyRing, VaultError>;
    fn save(&self, ring: &KeyRing) -> Result<(), VaultError>;
    /// Holds off every other process's rotation of these keys until the guard is dropped: two
    /// rotations that each load, extend and save the ring would each re-wrap data keys under
    /// a KEK the other's save may leave out. None where keys cannot change (or live in memory).
    fn exclusive(&self) -> Result<Option<std::fs::File>, VaultError> {
        Ok(None)
    }
}

/// KEKs in a JSON file readable only by its owner (mode 0600), written atomically.
pub struct FileKeys {
    path: PathBuf,
}

impl FileKeys {
    pub fn new(path: impl Into<PathBuf>) -> FileKeys {
        FileKeys { path: path.into() }
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn exists(&self) -> bool {
        self.path.exists()
    }
    /// Creates the key file with a fresh KEK; refuses to overwrite one (that would make every
    /// stored record unreadable), also when another process creates it at the same moment.
    pub fn init(&self) -> Result<KeyRing, VaultError> {
        let exists = || {
            VaultError::Keys(format!(
                "{} already exists; refusing to replace keys that encrypt existing data",
                self.path.display()
            ))
        };
        if self.exists() {
            return Err(exists());
        }
        let ring = KeyRing::generate();
        match write_private_new(&self.path, ring_text(&ring).as_bytes()) {
            Ok(()) => Ok(ring),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(exists()),
            Err(e) => Err(VaultError::Keys(format!(
                "cannot write {}: {e}",
                self.path.display()
            ))),
        }
    }
}

fn ring_text(ring: &KeyRing) -> Zeroizing<String> {
    Zeroizing::new(serde_json::to_string_pretty(ring).expect("a key ring always serialises"))
}

impl KekProvider for FileKeys {
    fn describe(&self) -> String {
        format!("key file {}", self.path.display())
    }

    fn load(&self) -> Result<KeyRing, VaultError> {
        let shown = self.path.display();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(&self.path).map_err(|e| {
                VaultError::Keys(format!(
                    "cannot read {shown}: {e} (create keys with `msec keys init`)"
                ))
            })?;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(VaultError::Keys(format!(
                    "{shown} is readable by other users; run `chmod 600 {shown}`"
                )));
            }
        }
        let text = Zeroizing::new(
            std::fs::read_to_string(&self.path)
                .map_err(|e| VaultError::Keys(format!("cannot read {shown}: {e}")))?,
        );
        serde_json::from_str::<KeyRing>(&text)
            .map_err(|e| VaultError::Keys(format!("{shown} is not a key ring: {e}")))?
            .check()
    }

    fn save(&self, ring: &KeyRing) -> Result<(), VaultError> {
        write_private(&self.path, ring_text(ring).as_bytes())
            .map_err(|e| VaultError::Keys(format!("cannot write {}: {e}", self.path.display())))
    }

    fn exclusive(&self) -> Result<Option<std::fs::File>, VaultError> {
        let mut lock = self.path.clone().into_os_string();
        lock.push(".lock");
        let lock = PathBuf::from(lock);
        let fail =
            |e: std::io::Error| VaultError::Keys(format!("cannot lock {}: {e}", lock.display()));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(&lock).map_err(fail)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                // An interactive command would otherwise sit there without a word.
                eprintln!(
                    "waiting for another process's key rotation to finish ({})…",
                    lock.display()
                );
                file.lock().map_err(fail)?;
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(fail(e)),
        }
        Ok(Some(file))
    }
}

/// A fresh, synced temporary file beside `path`, readable by its owner only: created new (so it
/// never follows a link planted there nor inherits an old file's looser mode), with a name of
/// its own (two writers never share one). Removed again if anything fails.
fn private_temp(path: &Path, bytes: &[u8]) -> std::io::Result<PathBuf> {
    use std::io::Write;
    let (tmp, mut file) = private_temp_file(path)?;
    match file.write_all(bytes).and_then(|()| file.sync_all()) {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// A new, empty private file (mode 0600) beside `path`, under a name no other writer uses.
fn private_temp_file(path: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir)?;
    }
    // Process id and a counter: unique among this machine's writers whatever the clock.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    // New, never an existing file or a link someone left there.
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(&tmp)?;
    Ok((tmp, file))
}

/// A private file (mode 0600) written a piece at a time, for output too large to hold whole
/// (an export): it is written under a temporary name and takes `path`'s only at
/// [`PrivateFile::commit`]. Dropped uncommitted, it leaves nothing behind and `path` as it was.
pub struct PrivateFile {
    file: std::io::BufWriter<std::fs::File>,
    tmp: Option<PathBuf>,
    path: PathBuf,
}

impl PrivateFile {
    pub fn create(path: &Path) -> std::io::Result<PrivateFile> {
        let (tmp, file) = private_temp_file(path)?;
        Ok(PrivateFile {
            file: std::io::BufWriter::new(file),
            tmp: Some(tmp),
            path: path.to_path_buf(),
        })
    }

    /// Makes the file durable and gives it its name, replacing any file there.
    pub fn commit(mut self) -> std::io::Result<()> {
        use std::io::Write;
        self.file.flush()?;
        self.file.get_ref().sync_all()?;
        if let Some(tmp) = self.tmp.take() {
            if let Err(e) = std::fs::rename(&tmp, &self.path) {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        }
        sync_parent(&self.path);
        Ok(())
    }
}

impl std::io::Write for PrivateFile {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.file.write(bytes)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Drop for PrivateFile {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

fn sync_parent(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes a private file (keys, key seeds, exports, witness state) all or nothing: a fresh
/// temporary file (see [`private_temp`]) renamed over `path`. A crash leaves the old file or the
/// new one, never a torn one.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = PrivateFile::create(path)?;
    file.write_all(bytes)?;
    file.commit()
}

/// [`write_private`] for a file that must not exist yet: fails with `AlreadyExists`, replacing
/// nothing, when it does (also when another process creates it meanwhile).
pub fn write_private_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::ErrorKind;
    let tmp = private_temp(path, bytes)?;
    // A hard link, unlike a rename, never replaces its target.
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        // Filesystems without hard links (SMB, exFAT, some FUSE mounts): created in place, new,
        // which is atomic against other creators though a crash may leave it partly written.
        Err(e) if e.kind() != ErrorKind::AlreadyExists => {
            use std::io::Write;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(path)?;
            file.write_all(bytes)?;
            file.sync_all()?;
        }
        Err(e) => return Err(e),
    }
    sync_parent(path);
    Ok(())
}

/// The KEK from an environment variable (`kek-id:64 hex digits`), for deployments whose secret
/// store injects it; read-only here. To rotate it, the secret store sets a new one and the old
/// one in the variable named with `_PREVIOUS` appended (several: comma-separated), `msec keys
/// rewrap` re-wraps every data key under the new one, and then the old one is removed.
pub struct EnvKeys {
    var: String,
}

impl EnvKeys {
    pub fn new(var: &str) -> EnvKeys {
        EnvKeys { var: var.into() }
    }
}

impl KekProvider for EnvKeys {
    fn describe(&self) -> String {
        format!("environment variable {}", self.var)
    }
    fn load(&self) -> Result<KeyRing, VaultError> {
        let previous_var = format!("{}_PREVIOUS", self.var);
        let value = Zeroizing::new(
            std::env::var(&self.var)
                .map_err(|_| VaultError::Keys(format!("{} is not set", self.var)))?,
        );
        let current = env_kek(&self.var, &value)?;
        let previous = match std::env::var(&previous_var) {
            Ok(list) => {
                let list = Zeroizing::new(list);
                list.split(',')
                    .filter(|k| !k.trim().is_empty())
                    .map(|k| env_kek(&previous_var, k.trim()))
                    .collect::<Result<Vec<_>, _>>()?
            }
            Err(_) => Vec::new(),
        };
        if previous.iter().any(|k| k.id == current.id) {
            return Err(VaultError::Keys(format!(
                "{previous_var} names the current key id {:?} again",
                current.id
            )));
        }
        Ok(KeyRing {
            format: FILE_FORMAT.into(),
            current,
            previous,
        })
    }
    fn save(&self, _: &KeyRing) -> Result<(), VaultError> {
        Err(VaultError::ReadOnly(format!(
            "keys from {} are read-only here: set a new one there, the old one in {}_PREVIOUS, and run `msec keys rewrap`",
            self.var, self.var
        )))
    }
}

/// One `kek-id:64 hex digits` value of variable `var`.
fn env_kek(var: &str, value: &str) -> Result<Kek, VaultError> {
    let malformed = || VaultError::Keys(format!("{var} must be KEK-ID:64-HEX-DIGITS"));
    let (id, hex_key) = value.split_once(':').ok_or_else(malformed)?;
    let mut key = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(hex_key.trim(), &mut key[..]).map_err(|_| malformed())?;
    Ok(Kek {
        id: id.to_string(),
        key,
        created_ms: 0,
    })
}

/// Keys held in memory only: tests and benchmarks.
pub struct MemoryKeys(Mutex<KeyRing>);

impl MemoryKeys {
    pub fn new() -> MemoryKeys {
        MemoryKeys(Mutex::new(KeyRing::generate()))
    }
}

impl Default for MemoryKeys {
    fn default() -> Self {
        MemoryKeys::new()
    }
}

impl KekProvider for MemoryKeys {
    fn describe(&self) -> String {
        "in-memory keys".into()
    }
    fn load(&self) -> Result<KeyRing, VaultError> {
        Ok(self.0.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }
    fn save(&self, ring: &KeyRing) -> Result<(), VaultError> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = ring.clone();
        Ok(())
    }
}

/// Creates `dir` (and its parents) readable by this user only (0700 on Unix): it is for key
/// files and databases. A directory that exists is left as it is.
pub fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}
