#[path = "support_s3/mod.rs"]
mod support_s3;
use support_s3::Garage;
use volbackup_store::backend::s3::*;
use volbackup_store::backend::{Backend, FileType};
#[test]
fn show() {
    let g = Garage::shared();
    let bucket = g.new_bucket("show");
    let mut c = g.repo_config(&g.endpoint(), &bucket, "x");
    c.region = Some("us-east-1".into());
    let b = S3Backend::open(c).unwrap();
    eprintln!("1 {:?}", b.read(FileType::Config, "config").unwrap_err());
    let b = S3Backend::open(g.repo_config(&g.endpoint(), &bucket, "x")).unwrap();
    let data = vec![7u8; 16 << 20];
    let t = std::time::Instant::now();
    for i in 0..8 { b.write(FileType::Pack, &format!("{i:02}aa"), &data).unwrap(); }
    let w = t.elapsed();
    let t = std::time::Instant::now();
    for i in 0..8 { assert_eq!(b.read(FileType::Pack, &format!("{i:02}aa")).unwrap().len(), data.len()); }
    eprintln!("write 128MiB {:?} read {:?}", w, t.elapsed());
    let t = std::time::Instant::now();
    for i in 0..200 { b.read_range(FileType::Pack, "00aa", i * 4096, 4096).unwrap(); }
    eprintln!("200 range reads {:?}", t.elapsed());
}
