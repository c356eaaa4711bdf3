//! A tiny persistent thread pool: `run(n, job)` calls `job(0)` on the calling thread and
//! `job(1..n)` on parked workers, and returns when all are done. No allocation per call (the
//! job is passed by reference; workers are spawned once, on first need). When the pool is busy
//! (another thread is inside `run`), the parts run one after another on the caller instead.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Condvar, Mutex, OnceLock, TryLockError};

type Job = dyn Fn(usize) + Sync;

struct State {
    epoch: u64,
    /// The current job (valid while `remaining > 0`), lifetime erased.
    job: Option<*const Job>,
    parts: usize,
    remaining: usize,
    spawned: usize,
    panicked: bool,
}

// SAFETY: the job pointer is only dereferenced while `run` keeps the job alive.
unsafe impl Send for State {}

struct Pool {
    state: Mutex<State>,
    work: Condvar,
    done: Condvar,
    busy: Mutex<()>,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        state: Mutex::new(State {
            epoch: 0,
            job: None,
            parts: 0,
            remaining: 0,
            spawned: 0,
            panicked: false,
        }),
        work: Condvar::new(),
        done: Condvar::new(),
        busy: Mutex::new(()),
    })
}

fn worker(id: usize) {
    let p = pool();
    let mut seen = 0u64;
    loop {
        let job = {
            let mut s = p.state.lock().unwrap_or_else(|e| e.into_inner());
            while s.epoch == seen {
                s = p.work.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            seen = s.epoch;
            if id >= s.parts {
                continue;
            }
            s.job
        };
        let ok = match job {
            // SAFETY: `run` waits for `remaining == 0` before the job goes out of scope.
            Some(j) => catch_unwind(AssertUnwindSafe(|| unsafe { (*j)(id) })).is_ok(),
            None => true,
        };
        let mut s = p.state.lock().unwrap_or_else(|e| e.into_inner());
        s.panicked |= !ok;
        s.remaining -= 1;
        if s.remaining == 0 {
            p.done.notify_all();
        }
    }
}

/// Runs `job(t)` for `t in 0..parts`, in parallel on the pool; returns when all are done.
pub(crate) fn run<'a>(parts: usize, job: &'a (dyn Fn(usize) + Sync + 'a)) {
    if parts <= 1 {
        job(0);
        return;
    }
    let p = pool();
    let _guard = match p.busy.try_lock() {
        Ok(g) => g,
        Err(TryLockError::Poisoned(e)) => e.into_inner(),
        Err(TryLockError::WouldBlock) => {
            for t in 0..parts {
                job(t);
            }
            return;
        }
    };
    {
        let mut s = p.state.lock().unwrap_or_else(|e| e.into_inner());
        while s.spawned < parts - 1 {
            s.spawned += 1;
            let id = s.spawned;
            let spawned = std::thread::Builder::new()
                .name(format!("mithril-gemm-{id}"))
                .spawn(move || worker(id));
            if spawned.is_err() {
                s.spawned -= 1;
                break;
            }
        }
        let parts_pool = parts.min(s.spawned + 1);
        // SAFETY (lifetime erasure): we wait below until every worker is done with it.
        let erased: *const Job =
            unsafe { std::mem::transmute::<&'a (dyn Fn(usize) + Sync + 'a), &'static Job>(job) };
        s.job = Some(erased);
        s.parts = parts_pool;
        s.remaining = parts_pool - 1;
        s.panicked = false;
        s.epoch += 1;
        p.work.notify_all();
        drop(s);
        // Parts the pool could not take (spawn failure) run here.
        let r = catch_unwind(AssertUnwindSafe(|| {
            job(0);
            for t in parts_pool..parts {
                job(t);
            }
        }));
        let mut s = p.state.lock().unwrap_or_else(|e| e.into_inner());
        while s.remaining > 0 {
            s = p.done.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.job = None;
        let panicked = s.panicked;
        drop(s);
        if let Err(e) = r {
            std::panic::resume_unwind(e);
        }
        assert!(!panicked, "gemm: a worker thread panicked");
    }
}
