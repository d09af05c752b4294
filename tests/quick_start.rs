//! The README's Quick start is `examples/quick_start.rs`: the example is
//! built by every `cargo test` and the README block is a doctest, so the
//! code compiles as written; this keeps the two texts from drifting apart.

#[test]
fn the_readme_quick_start_is_the_quick_start_example() {
    let readme = include_str!("../README.md");
    let section = readme
        .split_once("## Quick start\n")
        .expect("the README has a Quick start section")
        .1;
    let block = section
        .split_once("```rust,no_run\n")
        .expect("the Quick start has a `rust,no_run` block")
        .1
        .split_once("\n```")
        .expect("the block ends")
        .0;

    let example = include_str!("../examples/quick_start.rs");
    let code: String = example
        .lines()
        .skip_while(|line| line.starts_with("//!") || line.is_empty())
        .map(|line| format!("{line}\n"))
        .collect();
    assert_eq!(
        block.trim_end(),
        code.trim_end(),
        "README.md's Quick start and examples/quick_start.rs differ; make them the same"
    );
}
