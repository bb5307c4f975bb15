//! Attempts to misuse the vault: wrong AAD, tampered bytes, destroyed KEKs, leaky files.

use msec_vault::*;

#[test]
fn sealed_records_only_open_with_their_key_and_name() {
    let dek = DataKey::generate();
    let sealed = dek.seal(b"reading/d1/7", b"21.5 Cel");
    assert!(
        !sealed.windows(8).any(|w| w == b"21.5 Cel"),
        "plaintext visible"
    );
    assert_eq!(dek.open(b"reading/d1/7", &sealed).unwrap(), b"21.5 Cel");
    assert!(
        dek.open(b"reading/d1/8", &sealed).is_err(),
        "moved to another row"
    );
    assert!(DataKey::generate().open(b"reading/d1/7", &sealed).is_err());
    for i in 0..sealed.len() {
        let mut t = sealed.clone();
        t[i] ^= 1;
        assert!(
            dek.open(b"reading/d1/7", &t).is_err(),
            "bit flip at {i} accepted"
        );
    }
    assert!(dek.open(b"reading/d1/7", &sealed[..20]).is_err());
    assert_eq!(format!("{dek:?}"), "DataKey(..)");
}

#[test]
fn rotation_rewraps_and_then_destroys_the_old_kek() {
    let mut ring = KeyRing::generate();
    let dek = DataKey::generate();
    let sealed = dek.seal(b"x", b"secret");
    let (old_id, wrapped) = ring.wrap("alice", &dek);
    assert!(
        ring.unwrap("bob", &old_id, &wrapped).is_err(),
        "wrapped key moved to another subject"
    );

    ring.begin_rotation();
    let dek2 = ring.unwrap("alice", &old_id, &wrapped).unwrap();
    let (new_id, rewrapped) = ring.wrap("alice", &dek2);
    assert_ne!(new_id, old_id);
    ring.finish_rotation();
    assert!(ring.previous_ids().is_empty());
    // The old wrapping (as in a backup taken before the rotation) no longer opens.
    assert!(ring.unwrap("alice", &old_id, &wrapped).is_err());
    let dek3 = ring.unwrap("alice", &new_id, &rewrapped).unwrap();
    assert_eq!(dek3.open(b"x", &sealed).unwrap(), b"secret");
}

#[cfg(unix)]
#[test]
fn key_files_are_private_and_never_overwritten() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("msec-vault-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let keys = FileKeys::new(dir.join("keys.json"));
    let ring = keys.init().unwrap();
    let mode = std::fs::metadata(keys.path()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(keys.init().is_err(), "init replaced existing keys");
    assert_eq!(keys.load().unwrap().current_id(), ring.current_id());
    assert!(!format!("{ring:?}").contains(&std::fs::read_to_string(keys.path()).unwrap()[40..80]));

    std::fs::set_permissions(keys.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = keys.load().unwrap_err().to_string();
    assert!(err.contains("chmod 600"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn env_keys_load_and_refuse_to_save() {
    std::env::set_var("MSEC_TEST_KEK", format!("kek-env:{}", "ab".repeat(32)));
    let p = EnvKeys::new("MSEC_TEST_KEK");
    let ring = p.load().unwrap();
    assert_eq!(ring.current_id(), "kek-env");
    assert!(matches!(p.save(&ring), Err(VaultError::ReadOnly(_))));
    std::env::set_var("MSEC_TEST_KEK", "nonsense");
    assert!(p.load().is_err());
    // Rotating it: a new key current, the old one previous, until every data key is re-wrapped.
    std::env::set_var("MSEC_TEST_KEK", format!("kek-new:{}", "cd".repeat(32)));
    std::env::set_var(
        "MSEC_TEST_KEK_PREVIOUS",
        format!("kek-env:{}", "ab".repeat(32)),
    );
    let ring = p.load().unwrap();
    assert_eq!(
        (ring.current_id(), ring.previous_ids()),
        ("kek-new", vec!["kek-env".to_string()])
    );
    let (id, wrapped) = ring.wrap("alice", &DataKey::generate());
    assert_eq!(id, "kek-new");
    assert!(ring.unwrap("alice", &id, &wrapped).is_ok());
    std::env::set_var(
        "MSEC_TEST_KEK_PREVIOUS",
        format!("kek-new:{}", "cd".repeat(32)),
    );
    assert!(p.load().is_err(), "the current key again as a previous one");
    std::env::set_var("MSEC_TEST_KEK_PREVIOUS", "kek-old:short");
    assert!(p.load().is_err());
}

/// Two processes starting on one new data directory at once: one key file, never two KEKs
/// taking turns (each would wrap data keys the other's file cannot open).
#[test]
fn racing_first_starts_make_one_key_file() {
    let dir = std::env::temp_dir().join(format!("msec-vault-race-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("keys.json");
    let made: Vec<Option<String>> = std::thread::scope(|scope| {
        let starts: Vec<_> = (0..8)
            .map(|_| {
                let path = path.clone();
                scope.spawn(move || {
                    // `init` itself checks, so the race is between its check and its write.
                    FileKeys::new(&path)
                        .init()
                        .ok()
                        .map(|r| r.current_id().to_string())
                })
            })
            .collect();
        starts.into_iter().map(|s| s.join().unwrap()).collect()
    });
    let made: Vec<String> = made.into_iter().flatten().collect();
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!(FileKeys::new(&path).load().unwrap().current_id(), made[0]);
    // Nothing left behind beside it.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["keys.json"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(unix)]
#[test]
fn private_writes_replace_links_and_loose_modes_instead_of_following_them() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("msec-vault-write-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let elsewhere = dir.join("elsewhere");
    std::fs::write(&elsewhere, "untouched").unwrap();
    let target = dir.join("keys.json");
    std::os::unix::fs::symlink(&elsewhere, &target).unwrap();
    write_private(&target, b"secret").unwrap();
    assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "untouched");
    assert!(!std::fs::symlink_metadata(&target)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        std::fs::metadata(&target).unwrap().permissions().mode() & 0o777,
        0o600
    );
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
    write_private(&target, b"again").unwrap();
    assert_eq!(
        std::fs::metadata(&target).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let err = write_private_new(&target, b"other").unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "again");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A private file written in pieces appears only when committed; dropped before, it leaves
/// nothing behind and the file it would have replaced untouched.
#[test]
fn an_uncommitted_private_file_leaves_nothing() {
    use std::io::Write;
    let dir = std::env::temp_dir().join(format!("msec-vault-pieces-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let target = dir.join("export.json");
    std::fs::write(&target, "earlier").unwrap();
    let names = || -> Vec<String> {
        let mut n: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        n.sort();
        n
    };
    let mut file = PrivateFile::create(&target).unwrap();
    file.write_all(b"{\"half\":").unwrap();
    file.flush().unwrap();
    assert_eq!(names().len(), 2, "a temporary file beside it while written");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "earlier");
    drop(file);
    assert_eq!(names(), ["export.json"]);
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "earlier");

    let mut file = PrivateFile::create(&target).unwrap();
    for piece in ["{\"whole\":", "true}"] {
        file.write_all(piece.as_bytes()).unwrap();
    }
    file.commit().unwrap();
    assert_eq!(names(), ["export.json"]);
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "{\"whole\":true}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&target).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
