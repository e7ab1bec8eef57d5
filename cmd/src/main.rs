fn main() {
    std::process::exit(kubectl_volbackup::run());
}
