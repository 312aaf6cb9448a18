//! The request loop: one thread reads frames from the port; `WriteStdin`,
//! `CloseStdin`, `PortData` and `ClosePort` are handled in order right
//! there (so bytes and their close stay ordered), every other request on a thread of its own,
//! its response sent when it is done.

use std::fs::File;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use caisson_agent_proto::{code, frame, read_frame, request::Op, Frame, Response};

use crate::agent::Agent;
use crate::log::log;

pub fn serve(agent: Arc<Agent>, mut port: File) -> ! {
    let mut host_gone = false;
    loop {
        match read_frame(&mut port) {
            Ok(Some(frame)) => {
                host_gone = false;
                dispatch(&agent, frame);
            }
            // A virtio-serial port reads as EOF while the host's end is
            // closed: wait for it (the agent is PID 1; it never exits).
            end => {
                if !host_gone {
                    match end {
                        Err(e) => log!("reading the host channel: {e}; waiting"),
                        _ => log!("the host channel closed; waiting"),
                    }
                    host_gone = true;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

fn dispatch(agent: &Arc<Agent>, frame: Frame) {
    let id = frame.id;
    let Some(frame::Body::Request(request)) = frame.body else {
        log!("ignoring a frame that is not a request (id {id})");
        return;
    };
    let Some(op) = request.op else {
        respond(
            agent,
            id,
            Response::error(code::INVALID_ARGUMENT, "request without an op"),
        );
        return;
    };
    match op {
        Op::WriteStdin(r) => agent.write_stdin(&r.container_id, &r.exec_id, r.data),
        // PortForward's bytes and closes, in order, as stdin's.
        Op::PortData(r) => agent.ports.data(r),
        Op::ClosePort(r) => agent.ports.close(r.stream_id),
        op @ Op::CloseStdin(_) => {
            let response = agent.handle(op);
            respond(agent, id, response);
        }
        Op::Shutdown(_) => {
            respond(agent, id, Response::ok());
            log!("powering off");
            // SAFETY: sync(2) takes no arguments.
            unsafe { libc::sync() };
            let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
        }
        op => {
            let agent = Arc::clone(agent);
            std::thread::spawn(move || {
                let response =
                    catch_unwind(AssertUnwindSafe(|| agent.handle(op))).unwrap_or_else(|_| {
                        Response::error(code::INTERNAL, "the agent's handler panicked")
                    });
                respond(&agent, id, response);
            });
        }
    }
}

fn respond(agent: &Agent, id: u64, response: Response) {
    if id != 0 {
        agent.channel.send(&Frame::response(id, response));
    }
}
