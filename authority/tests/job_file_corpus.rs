//! Replays the checked-in `job_file` fuzz corpus (`fuzz/corpus/job_file/`) and a few hostile
//! inputs through the entry point the fuzz target uses (`ringzero_authority::fuzzing::job_file`):
//! the job file parser and the authority's checks of a job must return for any input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

#[test]
fn the_job_file_corpus_and_hostile_inputs_return() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/job_file");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus dir") {
        let path = entry.unwrap().path();
        ringzero_authority::fuzzing::job_file(&std::fs::read(&path).unwrap());
        seen += 1;
    }
    assert!(seen >= 3, "corpus of {seen} files in {}", dir.display());
    let deep = format!("args = {}{}", "[".repeat(10_000), "]".repeat(10_000));
    let wide = format!(
        "namespace = \"a\"\nname = \"b\"\ncommand = \"/x\"\nuid = 1\ngid = 1\nspiffe_id = \"spiffe://td/ns/a/b\"\nargs = [{}]\n",
        vec!["\"aaaa\""; 200_000].join(",")
    );
    for input in [
        &b"\xff\xfe"[..],
        b"",
        deep.as_bytes(),
        wide.as_bytes(),
        b"env = { \"\\u0000\" = \"x\" }",
    ] {
        ringzero_authority::fuzzing::job_file(input);
    }
}
