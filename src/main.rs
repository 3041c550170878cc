fn main() {
    std::process::exit(forkpool::cli::main())
}
