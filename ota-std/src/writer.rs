//! The writer thread: staging writes run here while the agent thread hashes the next block
//! (the core's `Config::write_buffers` > 1). Writes are done in the order they are handed
//! over and answered in that order, as the core's contract wants.
//!
//! The core lends a write's bytes only for the duration of the action, so each one is copied
//! into a buffer of a small pool (at most `write_buffers` are ever in use: the core has no
//! more writes in flight), which comes back with the result: no allocation per write.
//!
//! Records, clears and activation stay on the agent thread: the core asks for them only once
//! every write before them is answered, so the fsync that precedes a record covers every
//! byte it vouches for.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::input::Input;

/// One write: the bytes go to `file` at `offset`; `finish` (the slot's length) marks the
/// slot's last block, after which the file is trimmed and synced.
pub(crate) enum WriteJob {
    Write {
        file: Arc<File>,
        offset: u64,
        finish: Option<u64>,
    },
    /// A write refused before it started (unsafe task, file that would not open): it fails
    /// in its turn, so that results stay in the order of the writes.
    Fail(io::Error),
}

/// Writes `data` as the job says (on whichever thread runs it).
pub(crate) fn perform_write(job: WriteJob, data: &[u8]) -> io::Result<()> {
    match job {
        WriteJob::Write {
            file,
            offset,
            finish,
        } => {
            file.write_all_at(data, offset)?;
            if let Some(len) = finish {
                file.set_len(len)?;
                file.sync_data()?;
            }
            Ok(())
        }
        WriteJob::Fail(e) => Err(e),
    }
}

struct Done {
    result: io::Result<()>,
    buffer: Vec<u8>,
}

/// The agent thread's end of the writer thread.
pub(crate) struct Writer {
    jobs: Option<Sender<(WriteJob, Vec<u8>)>>,
    done: Receiver<Done>,
    /// Buffers back from the thread, ready for the next copy.
    pool: Vec<Vec<u8>>,
    in_flight: usize,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the thread. Each completed write also sends `Input::Written` to `wake`, so that
    /// a driver waiting for network input hears of it.
    pub(crate) fn start(wake: Sender<Input>) -> io::Result<Writer> {
        let (jobs, job_rx) = mpsc::channel::<(WriteJob, Vec<u8>)>();
        let (done_tx, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("ota-writer".into())
            .spawn(move || {
                for (job, buffer) in job_rx {
                    let result = perform_write(job, &buffer);
                    if done_tx.send(Done { result, buffer }).is_err() {
                        return;
                    }
                    let _ = wake.send(Input::Written);
                }
            })?;
        Ok(Writer {
            jobs: Some(jobs),
            done,
            pool: Vec::new(),
            in_flight: 0,
            thread: Some(thread),
        })
    }

    /// Hands a copy of `data` to the thread.
    pub(crate) fn submit(&mut self, job: WriteJob, data: &[u8]) -> io::Result<()> {
        let mut buffer = self.pool.pop().unwrap_or_default();
        buffer.clear();
        buffer.extend_from_slice(data);
        let jobs = self.jobs.as_ref().ok_or_else(gone)?;
        jobs.send((job, buffer)).map_err(|_| gone())?;
        self.in_flight += 1;
        Ok(())
    }

    /// The result of the oldest write, waiting for it when `wait`; `None` when there is
    /// none (yet).
    pub(crate) fn collect(&mut self, wait: bool) -> Option<io::Result<()>> {
        if self.in_flight == 0 {
            return None;
        }
        let done = if wait {
            self.done.recv().ok()
        } else {
            self.done.try_recv().ok()
        };
        let Some(Done { result, buffer }) = done else {
            // Only when the thread died: every write in flight is lost.
            return wait.then(|| {
                self.in_flight -= 1;
                Err(gone())
            });
        };
        self.in_flight -= 1;
        self.pool.push(buffer);
        Some(result)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.jobs = None; // ends the thread's loop once the writes handed over are done
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn gone() -> io::Error {
    io::Error::other("the writer thread is gone")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(file: &Arc<File>, offset: u64, finish: Option<u64>) -> WriteJob {
        WriteJob::Write {
            file: Arc::clone(file),
            offset,
            finish,
        }
    }

    #[test]
    fn writes_land_and_are_answered_in_order_with_pooled_buffers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("staging");
        let file = Arc::new(File::create(&path).unwrap());
        let (wake, woken) = mpsc::channel();
        let mut writer = Writer::start(wake).unwrap();
        // Longer than the slot at first: the last block trims it.
        writer.submit(job(&file, 0, None), &[1; 8]).unwrap();
        writer.submit(job(&file, 8, None), &[2; 8]).unwrap();
        writer
            .submit(WriteJob::Fail(io::Error::other("refused")), &[0; 8])
            .unwrap();
        writer.submit(job(&file, 4, Some(12)), &[3; 8]).unwrap();
        assert!(writer.collect(true).unwrap().is_ok());
        assert!(writer.collect(true).unwrap().is_ok());
        assert!(
            writer.collect(true).unwrap().is_err(),
            "the refused one, in its turn"
        );
        assert!(writer.collect(true).unwrap().is_ok());
        assert!(writer.collect(true).is_none(), "nothing more in flight");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            [[1; 4], [3; 4], [3; 4]].concat()
        );
        // Every completion wakes the driver (after its result is ready).
        for _ in 0..4 {
            let wake = woken.recv_timeout(std::time::Duration::from_secs(10));
            assert!(matches!(wake, Ok(Input::Written)));
        }
        // The buffers came back for reuse.
        assert_eq!(writer.pool.len(), 4);
        writer.submit(job(&file, 0, None), &[4; 2]).unwrap();
        assert_eq!(writer.pool.len(), 3);
        drop(writer); // waits for the write handed over
        assert_eq!(&std::fs::read(&path).unwrap()[..2], &[4, 4]);
    }
}
