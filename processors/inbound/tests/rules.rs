// Behaviour the classifier promises beyond the corpus figures, on small made-up reports.

use mailpipe_inbound::{classify, Kind, Reason};

fn dsn(fields: &str) -> Vec<u8> {
    format!(
        "From: MAILER-DAEMON@mx.example.net\nTo: sender@example.com\nSubject: Undelivered Mail Returned to Sender\n\
         MIME-Version: 1.0\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\n\n\
         --b\nContent-Type: text/plain\n\nYour message could not be delivered.\n\n\
         --b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.net\n\n{fields}\n\
         --b--\n"
    )
    .into_bytes()
}

#[test]
fn unknown_user_is_hard_only_when_code_or_rcpt_says_so() {
    let at_rcpt = dsn("Final-Recipient: rfc822; a@example.org\nAction: failed\nStatus: 5.1.1\nDiagnostic-Code: smtp; 550 5.1.1 User unknown\n");
    let r = &classify(&at_rcpt).unwrap().recipients[0];
    assert_eq!((r.reason, r.hard_bounce), (Reason::UserUnknown, true));

    let mailbox_status = dsn("Final-Recipient: rfc822; a@example.org\nAction: failed\nStatus: 5.2.1\nDiagnostic-Code: smtp; 550 5.2.1 User unknown\n");
    let r = &classify(&mailbox_status).unwrap().recipients[0];
    assert_eq!((r.reason, r.hard_bounce), (Reason::Filtered, false));

    let after_data = dsn("Final-Recipient: rfc822; a@example.org\nAction: failed\nStatus: 5.0.0\nDiagnostic-Code: smtp; 550 unknown user (in reply to end of DATA command)\n");
    assert_eq!(classify(&after_data).unwrap().recipients[0].reason, Reason::Filtered);
}

#[test]
fn dsn_fields_may_come_in_any_order() {
    let raw = dsn("Diagnostic-Code: smtp; 552 5.2.2 Mailbox full\nStatus: 5.2.2\nFinal-Recipient: rfc822; a@example.org\nAction: failed\n");
    let c = classify(&raw).unwrap();
    assert_eq!(c.recipients.len(), 1);
    assert_eq!((c.recipients[0].reason, c.recipients[0].status.as_str()), (Reason::MailboxFull, "5.2.2"));
}

#[test]
fn original_then_final_recipient_is_one_recipient() {
    let raw = dsn("Original-Recipient: rfc822; alias@example.org\nFinal-Recipient: rfc822; a@example.org\nAction: failed\nStatus: 5.1.1\n");
    let c = classify(&raw).unwrap();
    assert_eq!(c.recipients.len(), 1);
    assert_eq!(c.recipients[0].address, "a@example.org");
}

#[test]
fn amazon_ses_notifications_are_read() {
    let raw = b"From: no-reply@sns.amazonaws.com\nSubject: AWS Notification Message\n\n\
{\"notificationType\":\"Bounce\",\"bounce\":{\"bounceType\":\"Permanent\",\"reportingMTA\":\"dsn; a1.smtp-out.amazonses.com\",\
\"bouncedRecipients\":[{\"emailAddress\":\"a@example.org\",\"action\":\"failed\",\"status\":\"5.1.1\",\
\"diagnosticCode\":\"smtp; 550 5.1.1 user unknown\"}]},\"mail\":{}}\n";
    let c = classify(raw).unwrap();
    assert_eq!(c.kind, Kind::Bounce);
    let r = &c.recipients[0];
    assert_eq!((r.address.as_str(), r.reason, r.reply_code.as_str(), r.hard_bounce), ("a@example.org", Reason::UserUnknown, "550", true));

    let delivered = b"From: no-reply@sns.amazonaws.com\n\n{\"notificationType\":\"Delivery\",\"delivery\":{\"recipients\":[\"a@example.org\"],\"smtpResponse\":\"250 2.6.0 Message received\"}}";
    assert_eq!(classify(delivered).unwrap().recipients[0].reason, Reason::Delivered);
}

#[test]
fn transcript_success_replies_do_not_hide_the_failure() {
    let raw = b"From: MAILER-DAEMON@mx.example.net\nSubject: Returned mail: see transcript for details\n\n\
The following addresses had permanent fatal errors\n<a@example.org>\n\
 Out: 250 2.1.5 Ok\n Out: 451 4.3.0 Error: queue file write error\n";
    let r = &classify(raw).unwrap().recipients[0];
    assert_eq!((r.status.as_str(), r.reply_code.as_str()), ("4.3.0", "451"));
    assert_ne!(r.reason, Reason::Delivered);
}

#[test]
fn an_mbox_file_with_two_reports_yields_both_recipients() {
    let one = |rcpt: &str| {
        let body = String::from_utf8(dsn(&format!("Final-Recipient: rfc822; {rcpt}\nAction: failed\nStatus: 5.1.1\n"))).unwrap();
        format!("From MAILER-DAEMON  Thu Apr 29 23:34:45 2015\n{body}")
    };
    let raw = format!("{}\n{}", one("a@example.org"), one("b@example.org"));
    let c = classify(raw.as_bytes()).unwrap();
    let got: Vec<&str> = c.recipients.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(got, ["a@example.org", "b@example.org"]);

    // A body line that merely starts with "From " splits nothing.
    let quoted = one("a@example.org").replace("Your message could not be delivered.", "Your message could not be delivered.\nFrom here on: nothing");
    assert_eq!(classify(quoted.as_bytes()).unwrap().recipients.len(), 1);
}
