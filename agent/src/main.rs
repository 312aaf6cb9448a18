//! caisson-agent: the microvm guest's `/init`.
//!
//! It mounts the kernel's filesystems and cgroup2, loads the modules the
//! initramfs carries, mounts the host's shared directory, finds its
//! virtio-serial port, says `Ready`, and then serves `agent.proto`
//! (`caisson-agent-proto`): it creates the pod's containers with
//! libcontainer, forwards their output and exits, and reaps every process
//! (it is PID 1).

mod agent;
mod boot;
mod cgroup;
mod channel;
mod executor;
mod guest_spec;
mod lifecycle;
mod log;
mod network;
mod port;
mod reaper;
mod server;
mod stdio;

use std::sync::Arc;
use std::time::Duration;

use caisson_agent_proto::{event, Ready};

use crate::agent::Agent;
use crate::channel::Channel;
use crate::log::log;

fn main() {
    if std::process::id() != 1 {
        eprintln!(
            "caisson-agent runs as a microvm guest's /init (PID 1), not as pid {}",
            std::process::id()
        );
        std::process::exit(2);
    }
    boot::early();
    // libcontainer says why a container failed only through tracing (in
    // the container's own process, before it reports a bare "failed
    // syscall"): warnings and errors go to the console the host keeps.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .with_max_level(tracing::Level::WARN)
        .init();
    log!(
        "caisson-agent {} on {}",
        agent::VERSION,
        agent::kernel_release()
    );
    // Before any thread starts, so that every thread inherits it.
    reaper::block_sigchld();
    boot::mount_filesystems();
    boot::load_modules();
    boot::switch_root();
    boot::bring_up_loopback();
    boot::mount_shared();
    let port = match channel::open_port(Duration::from_secs(10)) {
        Ok(port) => port,
        Err(e) => {
            log!("{e}; nothing to serve");
            idle();
        }
    };
    let reader = match port.try_clone() {
        Ok(r) => r,
        Err(e) => {
            log!("duplicating the port's fd: {e}");
            idle();
        }
    };
    let channel = Arc::new(Channel::new(port));
    let agent = Arc::new(Agent::new(Arc::clone(&channel)));
    {
        let agent = Arc::clone(&agent);
        std::thread::spawn(move || reaper::run(agent));
    }
    {
        let agent = Arc::clone(&agent);
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            agent.check_oom();
        });
    }
    let boot_ms = log::boot_ms();
    log!("ready after {boot_ms} ms");
    // Blocks until the host opens its end.
    channel.event(event::Kind::Ready(Ready {
        agent_version: agent::VERSION.into(),
        kernel_release: agent::kernel_release(),
        boot_ms,
    }));
    server::serve(agent, reader);
}

/// PID 1 must not exit (the kernel panics): reap and wait.
fn idle() -> ! {
    loop {
        while let Ok(status) = nix::sys::wait::waitpid(None, None) {
            let _ = status;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}
