//! Block devices of a run on an EC2 instance: find the device a volume was attached as, format
//! it when dstack created the volume and it is blank, and mount it where the job's container
//! binds it.
//!
//! Invariants: a volume is formatted (ext4) only when both hold — dstack created it (the job
//! says `format`) and nothing is on it (no signature `blkid` knows, and a zero first MiB). A
//! registered volume (`volume_id`) is never formatted, whatever it holds; a blank one is refused
//! with a hint. EC2 attaches a volume as `/dev/sdf`, but on Nitro instances the kernel names it
//! `/dev/nvme1n1`; the volume id in `/dev/disk/by-id` finds it, with `/dev/xvdf` and the name
//! itself as fallbacks.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// What to do with a device before mounting it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Make an ext4 file system (dstack's own, blank volume).
    Format,
    /// Mount what is there.
    Mount,
    /// Blank, but not dstack's to format: refuse.
    RefuseBlank,
}

/// The rule: format only a blank volume that dstack created; never touch anything else.
pub fn decide(created_by_dstack: bool, blank: bool) -> Decision {
    match (created_by_dstack, blank) {
        (true, true) => Decision::Format,
        (false, true) => Decision::RefuseBlank,
        (_, false) => Decision::Mount,
    }
}

/// The names the kernel may have given the volume attached as `requested`, best first.
pub fn candidates(requested: &str, volume_id: &str, dev_root: &Path) -> Vec<PathBuf> {
    let by_id = dev_root.join("disk/by-id");
    let compact: String = volume_id.chars().filter(|c| *c != '-').collect();
    let mut out = vec![
        by_id.join(format!("nvme-Amazon_Elastic_Block_Store_{compact}")),
        by_id.join(format!("nvme-Amazon_Elastic_Block_Store_{compact}-ns-1")),
    ];
    let name = requested.trim_start_matches("/dev/");
    if let Some(letter) = name.strip_prefix("sd") {
        out.push(dev_root.join(format!("xvd{letter}")));
    }
    out.push(dev_root.join(name));
    out
}

/// The device of the volume, if the kernel shows it yet.
pub fn resolve(requested: &str, volume_id: &str, dev_root: &Path) -> Option<PathBuf> {
    candidates(requested, volume_id, dev_root)
        .into_iter()
        .find(|p| p.exists())
        .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
}

/// Wait until the volume shows up (EC2 attaches it after the instance boots).
pub async fn wait_for(
    requested: &str,
    volume_id: &str,
    timeout: Duration,
) -> Result<PathBuf, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(device) = resolve(requested, volume_id, Path::new("/dev")) {
            return Ok(device);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "the volume {volume_id} (attached as {requested}) did not appear within {} s",
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Whether nothing is on the device: `blkid` finds no signature (exit code 2) and the first MiB
/// is zeros. Without `blkid`, the zeros decide.
pub fn is_blank(device: &Path) -> Result<bool, String> {
    match Command::new("blkid").arg("-p").arg(device).output() {
        Ok(output) if output.status.code() == Some(2) => {}
        Ok(output) if output.status.success() => return Ok(false),
        Ok(output) => {
            return Err(format!(
                "blkid {} failed: {}",
                device.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(format!("cannot run blkid: {error}")),
    }
    let mut file = std::fs::File::open(device)
        .map_err(|e| format!("cannot read {}: {e}", device.display()))?;
    let mut buffer = vec![0u8; 1 << 20];
    let mut read = 0;
    while read < buffer.len() {
        match file.read(&mut buffer[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) => return Err(format!("cannot read {}: {e}", device.display())),
        }
    }
    Ok(buffer[..read].iter().all(|b| *b == 0))
}

fn is_mounted_at(dir: &Path) -> bool {
    std::fs::read_to_string("/proc/mounts").is_ok_and(|mounts| {
        mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .any(|m| Path::new(m) == dir)
    })
}

fn run(command: &mut Command, what: &str) -> Result<(), String> {
    let output = command
        .output()
        .map_err(|e| format!("{what}: cannot run it: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// What [`prepare`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prepared {
    pub formatted: bool,
}

/// Format the device if [`decide`] says so, and mount it at `mount_dir` (a device already
/// mounted there is left as it is).
pub fn prepare(
    device: &Path,
    volume_id: &str,
    created_by_dstack: bool,
    mount_dir: &Path,
) -> Result<Prepared, String> {
    if is_mounted_at(mount_dir) {
        return Ok(Prepared { formatted: false });
    }
    let blank = is_blank(device)?;
    let formatted = match decide(created_by_dstack, blank) {
        Decision::RefuseBlank => {
            return Err(format!(
                "the volume {volume_id} ({}) is blank, and dstack formats only the volumes it \
                 created; make a file system on it (e.g. `mkfs.ext4 {}`) and run again",
                device.display(),
                device.display()
            ));
        }
        Decision::Format => {
            run(
                Command::new("mkfs.ext4").arg("-q").arg("-F").arg(device),
                &format!("formatting {volume_id} ({})", device.display()),
            )?;
            true
        }
        Decision::Mount => false,
    };
    std::fs::create_dir_all(mount_dir)
        .map_err(|e| format!("cannot create {}: {e}", mount_dir.display()))?;
    run(
        Command::new("mount").arg(device).arg(mount_dir),
        &format!(
            "mounting {volume_id} ({}) at {}",
            device.display(),
            mount_dir.display()
        ),
    )?;
    Ok(Prepared { formatted })
}

/// Unmount what [`prepare`] mounted at `mount_dir`, so the volume can be detached while the
/// machine lives on (a fleet node). Nothing mounted there is not an error.
pub fn unmount(mount_dir: &Path) -> Result<(), String> {
    if !is_mounted_at(mount_dir) {
        return Ok(());
    }
    run(
        Command::new("umount").arg(mount_dir),
        &format!("unmounting {}", mount_dir.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_blank_volumes_dstack_created_are_formatted() {
        assert_eq!(decide(true, true), Decision::Format);
        assert_eq!(decide(true, false), Decision::Mount);
        assert_eq!(decide(false, false), Decision::Mount);
        assert_eq!(decide(false, true), Decision::RefuseBlank);
    }

    #[test]
    fn nvme_names_are_found_by_volume_id_before_the_requested_name() {
        let dev = tempfile::tempdir().expect("temp dir");
        let by_id = dev.path().join("disk/by-id");
        std::fs::create_dir_all(&by_id).expect("by-id");
        std::fs::write(dev.path().join("nvme1n1"), b"").expect("device");
        std::fs::write(dev.path().join("sdf"), b"").expect("device");
        std::os::unix::fs::symlink(
            dev.path().join("nvme1n1"),
            by_id.join("nvme-Amazon_Elastic_Block_Store_vol0123abcd"),
        )
        .expect("symlink");
        let found = resolve("/dev/sdf", "vol-0123abcd", dev.path()).expect("found");
        assert!(found.ends_with("nvme1n1"), "{}", found.display());
        // Another volume falls back to the name it was attached as, then xvd.
        let found = resolve("/dev/sdf", "vol-99", dev.path()).expect("found");
        assert!(found.ends_with("sdf"), "{}", found.display());
        std::fs::write(dev.path().join("xvdg"), b"").expect("device");
        let found = resolve("/dev/sdg", "vol-98", dev.path()).expect("found");
        assert!(found.ends_with("xvdg"), "{}", found.display());
        assert_eq!(resolve("/dev/sdh", "vol-97", dev.path()), None);
    }

    #[test]
    fn a_file_of_zeros_is_blank_and_one_with_data_is_not() {
        let dir = tempfile::tempdir().expect("temp dir");
        let zeros = dir.path().join("zeros");
        std::fs::write(&zeros, vec![0u8; 2 << 20]).expect("write");
        assert_eq!(is_blank(&zeros), Ok(true));
        let data = dir.path().join("data");
        let mut bytes = vec![0u8; 2 << 20];
        bytes[4096] = 1;
        std::fs::write(&data, bytes).expect("write");
        assert_eq!(is_blank(&data), Ok(false));
    }
}
