//! A read in a thread-local destructor that runs after txheap's own (which frees the buffer of
//! the thread's running reads) leaves nothing behind when the thread ends. (A review counted
//! 64 bytes left per such thread.) Its own test binary: it counts the process's allocations.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use txheap::{Heap, Options};

struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts the bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Ordering::SeqCst);
        // SAFETY: the caller's contract for `alloc` is passed on as it is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::SeqCst);
        // SAFETY: as above, for `dealloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Reads the heap when dropped.
struct Reads(Arc<Heap>);

impl Drop for Reads {
    fn drop(&mut self) {
        if self.0.read(|r| Ok(r.root::<u64>().is_ok())).is_err() {
            std::process::exit(3);
        }
    }
}

thread_local! {
    static LATE: std::cell::RefCell<Option<Reads>> = const { std::cell::RefCell::new(None) };
}

/// Live bytes left behind by `threads` threads that each read the heap in their body and, when
/// `late`, again in a destructor that runs after txheap's thread-locals.
fn left_by(heap: &Arc<Heap>, threads: usize, late: bool) -> i64 {
    let run = || {
        let h = heap.clone();
        std::thread::spawn(move || {
            if late {
                // Set first: destroyed after txheap's thread-locals, touched by the read below.
                LATE.with(|l| *l.borrow_mut() = Some(Reads(h.clone())));
            }
            h.read(|r| Ok(r.root::<u64>().is_ok())).unwrap();
        })
        .join()
        .unwrap();
    };
    run(); // (first-use allocations of the test's own machinery)
    let before = LIVE.load(Ordering::SeqCst);
    for _ in 0..threads {
        run();
    }
    LIVE.load(Ordering::SeqCst) - before
}

#[test]
fn reads_in_late_thread_local_destructors_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Arc::new(Heap::create(dir.path().join("leak.heap"), Options::new()).unwrap());
    heap.transaction(|tx| tx.root::<u64>().map(|_| ())).unwrap();
    let control = left_by(&heap, 500, false);
    let late = left_by(&heap, 500, true);
    assert!(
        control.abs() < 4096 && late.abs() < 4096,
        "bytes left by 500 threads: {control} reading in their bodies, {late} also in a late \
         destructor"
    );
}
