//! An ext4 file system in an image file, mounted through a loop device, whose
//! power can be cut: `EXT4_IOC_SHUTDOWN` with `EXT4_GOING_FLAGS_NOLOGFLUSH`
//! drops everything the file system has not yet written (data and journal),
//! and every later I/O on it fails with EIO, as after a power cut. Mounting
//! it again replays the journal as a reboot would.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `_IOR('X', 125, __u32)` from `linux/ext4.h`.
const EXT4_IOC_SHUTDOWN: libc::c_ulong = 0x8004_587D;
/// Shut down without flushing the journal: what is not on the device is lost.
const EXT4_GOING_FLAGS_NOLOGFLUSH: u32 = 2;

/// The image and where it is mounted; unmounted when dropped.
#[derive(Debug)]
pub struct Ext4Image {
    image: PathBuf,
    mount: PathBuf,
    mounted: bool,
}

impl Ext4Image {
    /// Makes an ext4 file system of `size` (e.g. `256M`) with 4 KiB blocks
    /// (so O_DIRECT's alignment holds) in `dir/NAME.img`, and mounts it at
    /// `dir/NAME`. An error says why this host cannot (not root, no loop
    /// devices, no mkfs.ext4).
    pub fn create(dir: &Path, name: &str, size: &str) -> Result<Ext4Image, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("mounting a loop device needs root".into());
        }
        let image = dir.join(format!("{name}.img"));
        let mount = dir.join(name);
        std::fs::create_dir_all(&mount).map_err(|e| e.to_string())?;
        run(Command::new("truncate").args(["-s", size]).arg(&image))?;
        run(Command::new("mkfs.ext4").args(["-q", "-F", "-b", "4096"]).arg(&image))?;
        let mut fs = Ext4Image {
            image,
            mount,
            mounted: false,
        };
        fs.mount()?;
        Ok(fs)
    }

    /// Where the file system is mounted.
    pub fn path(&self) -> &Path {
        &self.mount
    }

    /// Cuts the power: everything not yet on the device is lost, and every
    /// later I/O fails with EIO until [`Ext4Image::remount`].
    pub fn cut(&self) {
        let dir = std::fs::File::open(&self.mount).unwrap();
        let flags = EXT4_GOING_FLAGS_NOLOGFLUSH;
        // SAFETY: the ioctl reads one u32 from a live local; `dir` is an open
        // descriptor of a directory on the file system.
        let rc = unsafe { libc::ioctl(dir.as_raw_fd(), EXT4_IOC_SHUTDOWN, &flags) };
        assert_eq!(rc, 0, "EXT4_IOC_SHUTDOWN: {}", std::io::Error::last_os_error());
    }

    /// Unmounts and mounts again (the journal is replayed): the boot after
    /// a cut. Nothing may hold files open on it.
    pub fn remount(&mut self) {
        self.unmount().unwrap();
        self.mount().unwrap();
    }

    fn mount(&mut self) -> Result<(), String> {
        run(Command::new("mount")
            .args(["-t", "ext4", "-o", "loop"])
            .arg(&self.image)
            .arg(&self.mount))?;
        self.mounted = true;
        Ok(())
    }

    /// Unmounts, waiting out "target is busy": a killed process's
    /// io_uring instance is torn down after the process has gone (in a
    /// kernel worker), holding its files open until then.
    fn unmount(&mut self) -> Result<(), String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match run(Command::new("umount").env("LC_ALL", "C").arg(&self.mount)) {
                Ok(()) => break,
                Err(e) if e.contains("busy") && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        }
        self.mounted = false;
        Ok(())
    }
}

impl Drop for Ext4Image {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        }
    }
}

fn run(command: &mut Command) -> Result<(), String> {
    let out = command.output().map_err(|e| format!("{command:?}: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!("{command:?}: {}", stderr.trim()));
    }
    Ok(())
}
