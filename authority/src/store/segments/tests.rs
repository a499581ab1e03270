use super::*;

fn rows(from: u64, n: u64) -> Vec<(u64, Vec<u8>)> {
    (from..from + n)
        .map(|i| (i, format!("entry {i}").into_bytes()))
        .collect()
}

fn indexes(s: &Segments, start: u64, end: u64) -> Vec<u64> {
    s.read(start, end)
        .unwrap()
        .into_iter()
        .map(|(i, _)| i)
        .collect()
}

fn only_segment(dir: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|f| f.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files.pop().unwrap()
}

#[test]
fn appended_entries_are_read_back_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let s = Segments::open(dir.path(), None).unwrap();
    s.append(&rows(1, 10)).unwrap();
    s.append(&rows(11, 5)).unwrap();
    assert_eq!(s.last(), Some(15));
    assert_eq!(s.read(3, 4).unwrap(), rows(3, 2));
    drop(s);
    let s = Segments::open(dir.path(), None).unwrap();
    assert_eq!(s.last(), Some(15));
    assert_eq!(s.read(0, u64::MAX).unwrap(), rows(1, 15));
}

#[test]
fn appends_that_do_not_follow_the_last_entry_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = Segments::open(dir.path(), None).unwrap();
    s.append(&rows(1, 3)).unwrap();
    assert!(s.append(&rows(5, 1)).is_err());
    assert!(s.append(&[(4, vec![1]), (6, vec![2])]).is_err());
    assert_eq!(s.last(), Some(3));
}

#[test]
fn a_torn_record_at_the_end_is_cut_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let s = Segments::open(dir.path(), None).unwrap();
    s.append(&rows(1, 4)).unwrap();
    drop(s);
    let seg = only_segment(dir.path());
    let whole = scan(&std::fs::read(&seg).unwrap()).valid;
    // A crash halfway through writing entry 5: its header and half its payload.
    let mut partial = Vec::new();
    encode_record(5, b"entry 5 never acknowledged", &mut partial);
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.write_all_at(&partial[..HEADER + 4], whole).unwrap();
    let s = Segments::open(dir.path(), None).unwrap();
    assert_eq!(s.last(), Some(4));
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), whole);
    s.append(&rows(5, 1)).unwrap();
    drop(s);
    let s = Segments::open(dir.path(), None).unwrap();
    assert_eq!(s.read(0, 10).unwrap(), rows(1, 5));
}

#[test]
fn a_flipped_bit_in_the_last_segment_cuts_the_log_there() {
    let dir = tempfile::tempdir().unwrap();
    let s = Segments::open(dir.path(), None).unwrap();
    s.append(&rows(1, 4)).unwrap();
    drop(s);
    let seg = only_segment(dir.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    let third = scan(&bytes).records[2].1 as usize;
    bytes[third + HEADER] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();
    let s = Segments::open(dir.path(), None).unwrap();
    assert_eq!(indexes(&s, 0, 10), vec![1, 2]);
}

#[test]
fn damage_before_the_last_segment_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    // Two segments: fill the first past the segment size with one large append.
    let s = Segments::open(dir.path(), None).unwrap();
    let big = vec![7u8; SEGMENT_BYTES as usize];
    s.append(&[(1, big)]).unwrap();
    s.append(&rows(2, 2)).unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    drop(s);
    let first = dir.path().join(segment_name(1));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&first)
        .unwrap();
    f.write_all_at(&[0xff], (HEADER + 10) as u64).unwrap();
    let err = Segments::open(dir.path(), None).unwrap_err();
    assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
}

#[test]
fn a_gap_between_segments_or_a_stray_file_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let s = Segments::open(dir.path(), None).unwrap();
    s.append(&rows(1, 3)).unwrap();
    drop(s);
    // A segment that does not follow entry 3.
    let mut rec = Vec::new();
    encode_record(9, b"x", &mut rec);
    std::fs::write(dir.path().join(segment_name(9)), &rec).unwrap();
    assert!(Segments::open(dir.path(), None).is_err());
    std::fs::remove_file(dir.path().join(segment_name(9))).unwrap();
    // A record whose index is not its place.
    let mut rec = Vec::new();
    encode_record(8, b"x", &mut rec);
    std::fs::write(dir.path().join(segment_name(4)), &rec).unwrap();
    assert!(Segments::open(dir.path(), None).is_err());
    std::fs::remove_file(dir.path().join(segment_name(4))).unwrap();
    std::fs::write(dir.path().join("notanumber.seg"), b"").unwrap();
    assert!(Segments::open(dir.path(), None).is_err());
}

#[test]
fn truncation_removes_the_entries_from_the_index_on_durably() {
    let dir = tempfile::tempdir().unwrap();
    let s = Segments::open(dir.path(), None).unwrap();
    s.append(&rows(1, 10)).unwrap();
    s.truncate(6).unwrap();
    assert_eq!(s.last(), Some(5));
    s.append(&[(6, b"new 6".to_vec())]).unwrap();
    drop(s);
    let s = Segments::open(dir.path(), None).unwrap();
    assert_eq!(indexes(&s, 0, 20), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(s.read(6, 6).unwrap()[0].1, b"new 6");
    // Truncating everything, then appending from there.
    s.truncate(1).unwrap();
    assert_eq!(s.last(), None);
    s.append(&rows(1, 2)).unwrap();
    assert_eq!(indexes(&s, 0, 20), vec![1, 2]);
}

#[test]
fn truncation_across_segments_removes_the_later_ones() {
    let dir = tempfile::tempdir().unwrap();
    let s = Segments::open(dir.path(), None).unwrap();
    s.append(&[(1, vec![1u8; SEGMENT_BYTES as usize])]).unwrap();
    s.append(&rows(2, 3)).unwrap();
    s.truncate(1).unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    s.append(&rows(1, 1)).unwrap();
    drop(s);
    let s = Segments::open(dir.path(), None).unwrap();
    assert_eq!(s.read(0, 9).unwrap(), rows(1, 1));
}

#[test]
fn purged_entries_are_hidden_and_their_segments_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let s = Segments::open(dir.path(), None).unwrap();
    s.append(&[(1, vec![1u8; SEGMENT_BYTES as usize])]).unwrap();
    s.append(&rows(2, 5)).unwrap();
    s.purge(3).unwrap();
    assert_eq!(indexes(&s, 0, 20), vec![4, 5, 6]);
    // The first segment held only entry 1: gone. The last one stays.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    s.purge(6).unwrap();
    assert_eq!(s.last(), None);
    s.append(&rows(7, 1)).unwrap();
    drop(s);
    // Reopened with the purge point the caller recorded.
    let s = Segments::open(dir.path(), Some(6)).unwrap();
    assert_eq!(indexes(&s, 0, 20), vec![7]);
}

#[test]
fn scan_never_panics_on_hostile_bytes() {
    let mut good = Vec::new();
    encode_record(1, b"one", &mut good);
    encode_record(2, b"two", &mut good);
    let cases: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![0],
        vec![0xff; HEADER],
        // A header claiming 4 GiB.
        [u32::MAX.to_le_bytes(), [0; 4]].concat(),
        // A zero-length record with a wrong checksum.
        vec![0; HEADER],
        good[..good.len() - 1].to_vec(),
        good.clone(),
    ];
    for c in &cases {
        let s = scan(c);
        assert!(s.valid as usize <= c.len());
    }
    assert_eq!(scan(&good).records.len(), 2);
    assert_eq!(scan(&good).stopped, None);
    assert_eq!(scan(&good[..good.len() - 1]).records.len(), 1);
}

#[test]
fn appends_continue_past_a_purge_beyond_the_end() {
    // A snapshot installed past the end of the log: purged up to 20, appends from 21.
    let dir = tempfile::tempdir().unwrap();
    let s = Segments::open(dir.path(), None).unwrap();
    s.append(&rows(1, 5)).unwrap();
    s.purge(20).unwrap();
    assert_eq!(s.last(), None);
    s.append(&rows(21, 3)).unwrap();
    assert!(s.append(&rows(30, 1)).is_err());
    drop(s);
    let s = Segments::open(dir.path(), Some(20)).unwrap();
    assert_eq!(indexes(&s, 0, 40), vec![21, 22, 23]);
    // The next purge deletes the segment left behind.
    s.purge(21).unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    assert_eq!(indexes(&s, 0, 40), vec![22, 23]);
}

/// Whether the file system under `dir` allocates ahead (`fallocate`); where it does not,
/// segments grow with their appends and the size checks below do not apply.
fn allocates_ahead(dir: &Path) -> bool {
    let probe = dir.join("probe");
    let f = std::fs::File::create(&probe).unwrap();
    let ok = rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, 4096).is_ok();
    std::fs::remove_file(&probe).unwrap();
    ok
}

#[test]
fn appends_overwrite_zeros_ahead_of_them_and_the_zeros_are_a_clean_end() {
    let dir = tempfile::tempdir().unwrap();
    let ahead = allocates_ahead(dir.path());
    let s = Segments::open(dir.path(), None).unwrap();
    s.append(&rows(1, 3)).unwrap();
    let seg = only_segment(dir.path());
    let len = std::fs::metadata(&seg).unwrap().len();
    let bytes = std::fs::read(&seg).unwrap();
    let valid = scan(&bytes).valid;
    if !ahead {
        eprintln!("this file system does not allocate ahead: size checks skipped");
    }
    assert_eq!(len, valid + if ahead { ALLOCATE_AHEAD } else { 0 });
    assert!(bytes[valid as usize..].iter().all(|b| *b == 0));
    assert_eq!(scan(&bytes).stopped, None);
    // Later appends land inside the zeroed space: the file does not grow.
    s.append(&rows(4, 2)).unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    assert!(!ahead || len == valid + ALLOCATE_AHEAD);
    drop(s);
    // Reopened: the zeros are the end, the file keeps them, appends go on where records end.
    let s = Segments::open(dir.path(), None).unwrap();
    assert_eq!(s.last(), Some(5));
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), len);
    s.append(&rows(6, 1)).unwrap();
    drop(s);
    let s = Segments::open(dir.path(), None).unwrap();
    assert_eq!(s.read(0, 10).unwrap(), rows(1, 6));
}

#[test]
fn an_append_past_the_zeroed_space_extends_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = Segments::open(dir.path(), None).unwrap();
    s.append(&rows(1, 1)).unwrap();
    let seg = only_segment(dir.path());
    let len = std::fs::metadata(&seg).unwrap().len();
    // One entry larger than what is left of the zeroed space.
    let big = vec![9u8; ALLOCATE_AHEAD as usize];
    s.append(&[(2, big.clone())]).unwrap();
    let bytes = std::fs::read(&seg).unwrap();
    let valid = scan(&bytes).valid;
    assert!(valid > len);
    if allocates_ahead(dir.path()) {
        assert_eq!(bytes.len() as u64, valid + ALLOCATE_AHEAD);
    }
    drop(s);
    let s = Segments::open(dir.path(), None).unwrap();
    assert_eq!(s.read(2, 2).unwrap(), vec![(2, big)]);
}

#[test]
fn data_after_zeros_is_a_torn_end_not_a_clean_one() {
    // A crash can persist a later page of a write and not an earlier one: zeros, then bytes.
    let mut bytes = Vec::new();
    encode_record(1, b"entry 1", &mut bytes);
    let valid = bytes.len() as u64;
    bytes.extend_from_slice(&[0u8; 64]);
    bytes.extend_from_slice(b"stray");
    let found = scan(&bytes);
    assert_eq!(found.valid, valid);
    assert_eq!(found.records.len(), 1);
    assert!(found.stopped.is_some());
    // Zeros alone, however short, are a clean end.
    for zeros in [0, 1, HEADER - 1, HEADER, 4096] {
        let mut b = bytes[..valid as usize].to_vec();
        b.resize(b.len() + zeros, 0);
        let found = scan(&b);
        assert_eq!((found.valid, found.stopped), (valid, None), "{zeros} zeros");
    }
}

#[test]
fn a_truncated_record_does_not_come_back_after_zeros_are_extended_again() {
    let dir = tempfile::tempdir().unwrap();
    let s = Segments::open(dir.path(), None).unwrap();
    s.append(&rows(1, 5)).unwrap();
    s.truncate(3).unwrap();
    // A shorter entry 3 of a new term, then reopening: old entries 4 and 5 are gone.
    s.append(&[(3, b"3".to_vec())]).unwrap();
    drop(s);
    let s = Segments::open(dir.path(), None).unwrap();
    assert_eq!(s.last(), Some(3));
    assert_eq!(s.read(3, 3).unwrap(), vec![(3, b"3".to_vec())]);
}
