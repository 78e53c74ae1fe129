//! Loop devices over the pool's FUSE files: find a free device with
//! `LOOP_CTL_GET_FREE`, bind it with `LOOP_CONFIGURE`, and let the kernel
//! detach it (`LO_FLAGS_AUTOCLEAR`) once the last user closes it.
//!
//! Three ioctls and one prctl with no safe wrapper in nix; part of the
//! `sys` module, the crate's only home for `unsafe`.


use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;

/// `struct loop_info64` of `<linux/loop.h>`.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` of `<linux/loop.h>`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// A loop device bound to a file. While this value lives the device stays
/// attached; dropping it lets the kernel detach the device as soon as no
/// one (a mount, say) holds it any more.
#[derive(Debug)]
pub struct LoopDevice {
    path: PathBuf,
    device: File,
}

impl LoopDevice {
    /// Attaches `backing` to a free loop device; `readonly` makes the device
    /// read-only. With `direct_io` the device bypasses the page cache of
    /// `backing` (asked for, and dropped if the kernel refuses it); without,
    /// its reads and writes go through that page cache.
    pub fn attach(backing: &Path, readonly: bool, direct_io: bool) -> std::io::Result<LoopDevice> {
        let file = OpenOptions::new().read(true).write(!readonly).open(backing)?;
        let control = OpenOptions::new().read(true).write(true).open("/dev/loop-control")?;
        let mut last = None;
        for _ in 0..16 {
            // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number or -1.
            let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let path = PathBuf::from(format!("/dev/loop{n}"));
            let device = OpenOptions::new().read(true).write(!readonly).open(&path)?;
            let mut flags = LO_FLAGS_AUTOCLEAR;
            if direct_io {
                flags |= LO_FLAGS_DIRECT_IO;
            }
            if readonly {
                flags |= LO_FLAGS_READ_ONLY;
            }
            let fallback = [Some(flags), (flags & LO_FLAGS_DIRECT_IO != 0).then_some(flags & !LO_FLAGS_DIRECT_IO)];
            for flags in fallback.into_iter().flatten() {
                match configure(&device, &file, flags) {
                    Ok(()) => return Ok(LoopDevice { path, device }),
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) && flags & LO_FLAGS_DIRECT_IO != 0 => continue,
                    // Another process took the device between the two calls: find another.
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        last = Some(e);
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no free loop device")))
    }

    /// `/dev/loopN`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the device bypasses its backing file's page cache, as the
    /// kernel reports it (`/sys/block/loopN/loop/dio`).
    pub fn direct_io(&self) -> std::io::Result<bool> {
        let name = self.path.file_name().ok_or_else(|| std::io::Error::other("loop device path without a name"))?;
        let dio = std::fs::read_to_string(Path::new("/sys/block").join(name).join("loop/dio"))?;
        Ok(dio.trim() == "1")
    }

    /// Detaches now, even if a mount still uses the device (its I/O then fails).
    pub fn detach(self) -> std::io::Result<()> {
        // SAFETY: LOOP_CLR_FD takes no argument; the fd is an open loop device.
        let r = unsafe { libc::ioctl(self.device.as_raw_fd(), LOOP_CLR_FD) };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Loop devices (`/dev/loopN`) whose backing file lies under `dir`, as the
/// kernel names it in `/sys/block/loopN/loop/backing_file`.
pub fn backed_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/sys/block") else { return found };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        // Unbound devices have no backing_file.
        if let Ok(backing) = std::fs::read_to_string(entry.path().join("loop/backing_file")) {
            if Path::new(backing.trim_end_matches('\n')).starts_with(dir) {
                found.push(PathBuf::from("/dev").join(&name));
            }
        }
    }
    found.sort();
    found
}

/// Detaches the loop device at `path`. While something (a mount) still
/// holds it, the kernel only marks it for detaching on the last close.
pub fn detach_path(path: &Path) -> std::io::Result<()> {
    let device = OpenOptions::new().read(true).open(path)?;
    // SAFETY: LOOP_CLR_FD takes no argument; the fd is an open block device
    // (a device that is not a loop device refuses the ioctl with ENOTTY).
    let r = unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CLR_FD) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn configure(device: &File, backing: &File, flags: u32) -> std::io::Result<()> {
    let config = LoopConfig {
        fd: backing.as_raw_fd() as u32,
        block_size: 4096,
        info: LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: flags,
            lo_file_name: [0; 64],
            lo_crypt_name: [0; 64],
            lo_encrypt_key: [0; 32],
            lo_init: [0; 2],
        },
        reserved: [0; 8],
    };
    // SAFETY: LOOP_CONFIGURE reads one `struct loop_config`, which `config`
    // matches in layout (repr(C), same field order and sizes) and outlives the call.
    let r = unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CONFIGURE, &config as *const LoopConfig) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Marks the calling thread as an I/O flusher (`PR_SET_IO_FLUSHER`): its
/// allocations never recurse into filesystem writeback, which could wait on
/// this very thread through the loop device.
pub fn set_io_flusher() -> std::io::Result<()> {
    const PR_SET_IO_FLUSHER: libc::c_int = 57;
    // SAFETY: PR_SET_IO_FLUSHER takes integer arguments only and changes a
    // flag of the calling thread.
    let r = unsafe { libc::prctl(PR_SET_IO_FLUSHER, 1 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn loop_config_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<super::LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<super::LoopConfig>(), 304);
    }
}
