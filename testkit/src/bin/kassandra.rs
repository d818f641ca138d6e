//! kassandra, the in-memory CQL server the tests use, on its own: for
//! running `herald migrate`, herald and `herald api` by hand on a machine
//! without ScyllaDB. Prints its address and herald's flags for it, then
//! serves until killed. Nothing is kept when it stops.

fn main() {
    let cql = herald_testkit::Cql::start();
    println!("{}", cql.uri);
    println!("herald flags: {}", cql.args().join(" "));
    loop {
        std::thread::park();
    }
}
