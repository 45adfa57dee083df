//! Ctrl-C while a command waits for another program to act on what it asked: the wait ends,
//! not the act, and the user is told which before the command dies by SIGINT, as Ctrl-C ends
//! a program (a shell script stops there, where an `exit(130)` would let it go on).

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::Signal::SIGINT;
use nix::sys::signal::{pthread_sigmask, raise, signal, SigHandler, SigSet, SigmaskHow};

static ASKED: AtomicBool = AtomicBool::new(false);

/// Marks that something was asked of another program: an interrupt from now on leaves it
/// going on there.
pub fn asked() {
    ASKED.store(true, Ordering::SeqCst);
}

/// From now on, Ctrl-C prints `going_on` once [`asked`] was called, else `nothing_asked`, and
/// ends the process by SIGINT. To be called before any other thread exists: SIGINT is blocked
/// and taken by a thread of its own, and threads made later inherit it blocked. Not when
/// SIGINT is ignored, as a shell's `&` job has it: a blocked signal would be taken all the same.
pub fn say_at_interrupt(going_on: String, nothing_asked: String) {
    if ignored(SIGINT) {
        return;
    }
    let mut interrupt = SigSet::empty();
    interrupt.add(SIGINT);
    if pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&interrupt), None).is_err() {
        return;
    }
    std::thread::spawn(move || {
        if interrupt.wait().is_err() {
            return;
        }
        match ASKED.load(Ordering::SeqCst) {
            true => eprintln!("{going_on}"),
            false => eprintln!("{nothing_asked}"),
        }
        // SAFETY: the default disposition runs no code of ours.
        let _ = unsafe { signal(SIGINT, SigHandler::SigDfl) };
        let _ = pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&interrupt), None);
        let _ = raise(SIGINT);
        std::process::exit(130);
    });
}

/// Whether `signal` is ignored (inherited so across `exec`).
fn ignored(signal: nix::sys::signal::Signal) -> bool {
    let mut current = std::mem::MaybeUninit::<nix::libc::sigaction>::zeroed();
    // SAFETY: a null new action only reads the current one into `current`, which is zeroed
    // and as large as the kernel writes.
    let read = unsafe {
        nix::libc::sigaction(
            signal as nix::libc::c_int,
            std::ptr::null(),
            current.as_mut_ptr(),
        )
    };
    // SAFETY: written by the call when it succeeded; zeroed (the default action) otherwise.
    read == 0 && unsafe { current.assume_init() }.sa_sigaction == nix::libc::SIG_IGN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ignored_signal_is_told_from_one_taken_by_default() {
        assert!(!ignored(nix::sys::signal::Signal::SIGUSR2));
        // SAFETY: ignoring a signal runs no code of ours.
        unsafe { signal(nix::sys::signal::Signal::SIGUSR2, SigHandler::SigIgn) }.unwrap();
        assert!(ignored(nix::sys::signal::Signal::SIGUSR2));
    }
}
