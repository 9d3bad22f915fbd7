// Debug aid: prints the parsed structure and the classification of one message.
fn main() {
    let Some(path) = std::env::args().nth(1) else { return };
    let raw = std::fs::read(&path).unwrap_or_default();
    let data = mailpipe_inbound::mime::normalize_newlines(&raw);
    let msg = mailpipe_inbound::mime::parse(&data);
    println!("ct={} report={} parts={}", msg.content_type, msg.report_type, msg.parts.len());
    for p in &msg.parts {
        println!("-- {} ({} chars): {:?}", p.content_type, p.text.len(), p.text.chars().take(300).collect::<String>());
    }
    println!("{}", mailpipe_inbound::inspect_json(&path, &raw));
}
