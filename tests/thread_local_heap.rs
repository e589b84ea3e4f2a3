//! A `Heap` kept in a thread-local: at the thread's exit its destructor runs after txheap's own
//! thread-locals may have been destroyed, and a read, a transaction and the close there still
//! work. (A review found the process aborted: "thread local panicked on drop", the close
//! asking for txheap's thread-local of running reads after its destruction.) Its own test
//! binary: the failure is an abort of the process.

use std::cell::RefCell;
use std::path::PathBuf;

use txheap::{Heap, Options};

/// A heap whose owner, when dropped, commits one more transaction and reads it back first.
struct Holder {
    heap: Heap,
}

impl Drop for Holder {
    fn drop(&mut self) {
        let done = self.heap.transaction(|tx| {
            let r = tx.root::<u64>()?;
            *tx.get_mut(r)? += 100;
            Ok(())
        });
        let seen = self.heap.read(|r| Ok(*r.get(r.root::<u64>()?)?));
        // (A panic here would abort: report through the file instead, checked after the join.)
        if done.is_err() || seen.map_or(true, |v| v < 100) {
            std::process::exit(3);
        }
    }
}

thread_local! {
    static HEAP: RefCell<Option<Holder>> = const { RefCell::new(None) };
}

fn use_in_a_thread(path: PathBuf) {
    std::thread::spawn(move || {
        // Registered first, so destroyed after txheap's thread-locals (glibc destroys them
        // newest first), which the read and the transaction below touch for the first time.
        HEAP.with(|h| {
            *h.borrow_mut() = Some(Holder {
                heap: Heap::open(&path, Options::new()).unwrap(),
            })
        });
        HEAP.with(|h| {
            let h = h.borrow();
            let heap = &h.as_ref().unwrap().heap;
            heap.transaction(|tx| {
                let r = tx.root::<u64>()?;
                *tx.get_mut(r)? += 1;
                Ok(())
            })
            .unwrap();
            assert!(heap.read(|r| Ok(*r.get(r.root::<u64>()?)?)).unwrap() >= 1);
        });
    })
    .join()
    .expect("the thread ends cleanly");
}

#[test]
fn a_heap_dropped_by_a_thread_local_destructor_closes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tls.heap");
    Heap::create(&path, Options::new())
        .unwrap()
        .close()
        .unwrap();
    use_in_a_thread(path.clone());
    use_in_a_thread(path.clone());
    // Both closes released the lock, and every transaction is there.
    let heap = Heap::open(&path, Options::new()).unwrap();
    assert_eq!(heap.read(|r| Ok(*r.get(r.root::<u64>()?)?)).unwrap(), 202);
    heap.close().unwrap();
}
