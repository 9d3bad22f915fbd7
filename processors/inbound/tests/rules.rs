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
    // The address the sender wrote: its send and its suppression entry know that one.
    assert_eq!(c.recipients[0].address, "alias@example.org");
    assert_eq!(c.recipients[0].expanded_to.as_deref(), Some("a@example.org"));
    let x400 = dsn("Final-Recipient: x400; /S=a/OU=example/C=GB/\nOriginal-Recipient: rfc822; a@example.uk\nAction: failed\nStatus: 5.1.1\n\nOriginal-Recipient: rfc822; b@example.uk\nFinal-Recipient: rfc822; b@local\nAction: failed\nStatus: 5.1.1\n");
    let got: Vec<String> = classify(&x400).unwrap().recipients.into_iter().map(|r| r.address).collect();
    assert_eq!(got, ["a@example.uk", "b@example.uk"]);
}

#[test]
fn an_expanded_address_is_answered_as_written_with_where_it_went() {
    let text = |body: &str| format!("From: Mail Delivery Subsystem <MAILER-DAEMON@mx.example.net>\nTo: sender@example.com\nSubject: Returned mail: see transcript for details\n\n{body}").into_bytes();
    let sendmail = text("   ----- The following addresses had permanent fatal errors -----\nb@final.example.net\n    (expanded from: a@example.org)\n\n   ----- Transcript of session follows -----\n550 5.1.1 b@final.example.net... User unknown\n");
    let postfix = text("This is the mail system at host mx.example.net.\n\n<b@final.example.net> (expanded from <a@example.org>): host mx.final.example.net said:\n    550 5.1.1 user unknown (in reply to RCPT TO command)\n");
    let exim = text("This message was created automatically by mail delivery software.\n\nThe following address(es) failed:\n\n  b@final.example.net\n    (generated from a@example.org)\n    SMTP error from remote mail server after RCPT TO:<b@final.example.net>:\n    550 5.1.1 user unknown\n");
    for (name, raw) in [("sendmail", sendmail), ("postfix", postfix), ("exim", exim)] {
        let c = classify(&raw).unwrap();
        let got: Vec<(&str, Option<&str>)> = c.recipients.iter().map(|r| (r.address.as_str(), r.expanded_to.as_deref())).collect();
        assert_eq!(got, [("a@example.org", Some("b@final.example.net"))], "{name}");
        assert_eq!(c.recipients[0].reason, Reason::UserUnknown, "{name}");
    }
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

#[test]
fn the_status_comment_is_the_reporters_own_reading() {
    // No Diagnostic-Code: the comment after the code is all the report says of this recipient.
    let raw = dsn("Final-Recipient: rfc822; a@example.org\nAction: delayed\nStatus: 4.0.0 (example.org: host name lookup failure)\n");
    let r = &classify(&raw).unwrap().recipients[0];
    assert_eq!((r.reason, r.status.as_str()), (Reason::NetworkError, "4.0.0"));

    let raw = dsn("Final-Recipient: rfc822; a@example.org\nAction: failed\nStatus: 5.2.1 (mailbox disabled, not accepting messages)\nDiagnostic-Code: smtp; 550 5.2.1 <a@example.org>... User Unknown\n");
    let r = &classify(&raw).unwrap().recipients[0];
    assert_eq!((r.reason, r.hard_bounce), (Reason::Suspend, false));
}

#[test]
fn an_expiry_summary_loses_to_the_remote_servers_code() {
    let raw = dsn("Final-Recipient: rfc822; a@example.org\nAction: failed\nStatus: 4.4.7\nDiagnostic-Code: smtp; 451 4.7.1 <mx.example.com[192.0.2.9]>: Client host rejected: try later\n");
    let r = &classify(&raw).unwrap().recipients[0];
    assert_eq!((r.reason, r.status.as_str(), r.reply_code.as_str()), (Reason::Blocked, "4.7.1", "451"));

    // The reply code written with the quoted code goes with it, not the summary's.
    let raw = dsn("Final-Recipient: rfc822; a@example.org\nAction: failed\nStatus: 4.4.7\nDiagnostic-Code: smtp; 554 4.4.7 Message expired: unable to deliver in 24 hours.<421 4.4.2 Connection timed out>\n");
    let r = &classify(&raw).unwrap().recipients[0];
    assert_eq!((r.reason, r.status.as_str(), r.reply_code.as_str()), (Reason::Expired, "4.4.2", "421"));

    let alone = dsn("Final-Recipient: rfc822; a@example.org\nAction: failed\nStatus: 4.4.7\nDiagnostic-Code: smtp; delivery time expired\n");
    assert_eq!(classify(&alone).unwrap().recipients[0].status, "4.4.7");
}

#[test]
fn gmail_state_numbers_name_the_failed_stage() {
    let raw = b"From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>\nTo: a@example.com\n\
Subject: Delivery Status Notification (Failure)\n\n\
Delivery to the following recipient failed permanently:\n\n     b@example.org\n\n\
Technical details of permanent failure:\nGoogle tried to deliver your message, but it was rejected by the recipient\n\
domain. The error that the other server returned was: 550 550 Unknown user b@example.org (state 18).\n";
    let r = &classify(raw).unwrap().recipients[0];
    assert_eq!((r.address.as_str(), r.reason, r.hard_bounce), ("b@example.org", Reason::Filtered, false));
    // The same number from anyone else means nothing.
    let other = String::from_utf8_lossy(raw).replace("googlemail.com", "mx.example.net").replace("Unknown user", "Header error");
    assert_ne!(classify(other.as_bytes()).unwrap().recipients[0].reason, Reason::Filtered);
}

#[test]
fn yahoo_tss04_is_a_refusal_at_yahoos_mx_and_reputation_elsewhere() {
    let msg = |remote: &str| {
        dsn(&format!("Final-Recipient: rfc822; a@yahoo.example\nAction: failed\nStatus: 4.7.0\nRemote-MTA: dns; {remote}\n\
Diagnostic-Code: smtp; 421 4.7.0 [TSS04] Messages from 192.0.2.7 temporarily deferred due to unexpected volume or user complaints\n"))
    };
    // Yahoo's MX answers it to senders refused for other causes too (missing SPF, DKIM, DMARC).
    assert_eq!(classify(&msg("mta5.am0.yahoodns.net")).unwrap().recipients[0].reason, Reason::Rejected);
    // Quoted by any other system the code keeps its documented meaning.
    assert_eq!(classify(&msg("mx.relay.example.net")).unwrap().recipients[0].reason, Reason::BadReputation);
}

#[test]
fn docomo_unknown_user_after_data_is_a_refusal_not_a_missing_mailbox() {
    let msg = |diag: &str| {
        dsn(&format!("Final-Recipient: rfc822; a@docomo.example\nAction: failed\nStatus: 5.0.0\nRemote-MTA: dns; mfsmax.docomo.ne.jp\nDiagnostic-Code: smtp; {diag}\n"))
    };
    let r = &classify(&msg("550 Unknown user a@docomo.example (in reply to end of DATA command)")).unwrap().recipients[0];
    assert_eq!((r.reason, r.hard_bounce), (Reason::Rejected, false));
    let r = &classify(&msg("550 Unknown user a@docomo.example (in reply to RCPT TO command)")).unwrap().recipients[0];
    assert_eq!((r.reason, r.hard_bounce), (Reason::UserUnknown, true));
}

#[test]
fn apache_james_notices_name_recipients_in_their_details() {
    let raw = b"From: postmaster@james.example.net\nTo: a@example.com\nSubject: [BOUNCE]\n\
Message-ID: <1.2.JavaMail.james@james.example.net>\n\n\
Error message below:\n550 5.1.1 Requested action not taken: no such user here\n\n\
Message details:\n  Subject: hello\n  MAIL FROM: a@example.com\n  RCPT TO: b@example.org\n  RCPT TO: c@example.org\n  Size (in bytes): 120\n";
    let c = classify(raw).unwrap();
    assert_eq!(c.kind, Kind::Bounce);
    let got: Vec<(&str, Reason, &str)> = c.recipients.iter().map(|r| (r.address.as_str(), r.reason, r.reply_code.as_str())).collect();
    assert_eq!(got, [("b@example.org", Reason::UserUnknown, "550"), ("c@example.org", Reason::UserUnknown, "550")]);
}

#[test]
fn fml_refusals_are_bounces_of_the_list_address() {
    let raw = b"From: cats-admin@lists.example.org\nTo: a@example.com\nSubject: You a@example.com are not member (cats ML)\n\
Message-ID: <200101010000.FMLAAA0001.cats@lists.example.org>\nX-MLServer: fml [fml 4.0.3 release]\n\n\
You are not a member of this mailing list <cats@lists.example.org>.\n\nOriginal mail as follows:\n\nSubject: hi\n";
    let c = classify(raw).unwrap();
    assert_eq!(c.kind, Kind::Bounce);
    let r = &c.recipients[0];
    assert_eq!((r.address.as_str(), r.reason, r.status.as_str()), ("cats@lists.example.org", Reason::Rejected, "5.0.918"));

    // A post the list distributes carries the same server header but is no notice.
    let post = b"From: bob@example.net\nTo: cats@lists.example.org\nSubject: hello <cats@lists.example.org>.\n\
Message-ID: <abc@example.net>\nX-MLServer: fml [fml 4.0.3 release]\n\nHello <cats@lists.example.org>.\n";
    assert_ne!(classify(post).unwrap().kind, Kind::Bounce);
}

#[test]
fn a_bare_list_of_recipients_gives_no_reason() {
    let raw = b"From: Mail Delivery System <>\nTo: a@example.com\nSubject: Delivery status notification\n\n\
This is an automatically generated Delivery Status Notification.\n\n\
Delivery to the following recipients failed permanently:\n\n   * b@example.org\n";
    let r = &classify(raw).unwrap().recipients[0];
    assert_eq!((r.reason, r.status.as_str()), (Reason::Undefined, "5.0.900"));
}

#[test]
fn a_bare_policy_violation_is_left_to_the_status_code() {
    let msg = |words: &str| {
        dsn(&format!("Final-Recipient: rfc822; a@example.org\nAction: failed\nStatus: 5.7.0\nDiagnostic-Code: smtp; 550 5.7.0 <a@example.org>: Recipient address rejected: {words}\n"))
    };
    assert_eq!(classify(&msg("Policy violation")).unwrap().recipients[0].reason, Reason::SecurityError);
    assert_eq!(classify(&msg("Local policy violation")).unwrap().recipients[0].reason, Reason::PolicyViolation);
    assert_eq!(classify(&msg("Denied by policy")).unwrap().recipients[0].reason, Reason::PolicyViolation);
}

#[test]
fn a_local_delivery_agents_words_decide_over_the_status_code() {
    let sendmail = |transcript: &str, status: &str| {
        format!(
            "From: Mail Delivery Subsystem <MAILER-DAEMON@mx.example.edu>\nTo: sender@example.com\nSubject: Returned mail: see transcript\n\
MIME-Version: 1.0\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\n\n\
--b\nContent-Type: text/plain\n\n   ----- Transcript of session follows -----\n{transcript}\n\n\
--b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.edu\n\n\
Final-Recipient: RFC822; a@mx.example.edu\nAction: failed\nStatus: {status}\n\n--b--\n"
        )
        .into_bytes()
    };
    let procmail = "554 \"|exec /usr/local/bin/procmail -f- #a\"... Service unavailable";
    let r = &classify(&sendmail(procmail, "5.5.0")).unwrap().recipients[0];
    assert_eq!((r.reason, r.hard_bounce), (Reason::SystemError, false));
    let quota = "554 \"|exec /usr/local/bin/procmail -f- #a\"... procmail: Quota exceeded while writing \"/var/mail/a\"";
    assert_eq!(classify(&sendmail(quota, "5.2.2")).unwrap().recipients[0].reason, Reason::MailboxFull);
    // Any other failure of the agent is the mailer's.
    let other = "554 \"|exec /usr/local/bin/procmail -f- #a\"... unknown mailer error 1";
    assert_eq!(classify(&sendmail(other, "5.3.0")).unwrap().recipients[0].reason, Reason::MailerError);
}

#[test]
fn qmails_own_unable_to_is_a_system_error() {
    let qmail = |words: &str| {
        format!(
            "From: MAILER-DAEMON@mx.example.net\nTo: sender@example.com\nSubject: failure notice\n\n\
Hi. This is the qmail-send program at mx.example.net.\nI'm afraid I wasn't able to deliver your message to the following addresses.\n\
This is a permanent error; I've given up. Sorry it didn't work out.\n\n<a@example.org>:\n{words}\n\n\
--- Below this line is a copy of the message.\n\nSubject: hi\n"
        )
        .into_bytes()
    };
    let r = &classify(&qmail("Unable to deliver message after multiple retries, giving up.")).unwrap().recipients[0];
    assert_eq!((r.reason, r.status.as_str()), (Reason::SystemError, "5.0.930"));
    let r = &classify(&qmail("Unable to chdir to maildir. (#4.2.1)")).unwrap().recipients[0];
    assert_eq!(r.reason, Reason::SystemError);
    // The recipient's own cause still wins, and other systems' "unable to" means nothing special.
    assert_eq!(classify(&qmail("Unable to deliver: mailbox is full")).unwrap().recipients[0].reason, Reason::MailboxFull);
    let other = String::from_utf8_lossy(&qmail("Unable to deliver message after multiple retries, giving up.")).replace("failure notice", "Undelivered Mail");
    assert_ne!(classify(other.as_bytes()).unwrap().recipients[0].reason, Reason::SystemError);
}

#[test]
fn delay_notices_are_not_permanent_and_giving_up_is() {
    let warning = b"From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\nTo: sender@example.com\nSubject: Warning: message 1x delayed 24 hours\n\n\
A message that you sent has not yet been delivered to all its recipients after more than 24 hours.\n\
The address to which the message has not yet been delivered is:\n\n  someone@example.org\n\n\
No action is required on your part. Delivery attempts will continue for some time.\n";
    let c = classify(warning).unwrap();
    assert_eq!(c.kind, Kind::Bounce);
    let r = &c.recipients[0];
    assert_eq!(r.address, "someone@example.org");
    assert!(!r.permanent && !r.hard_bounce && r.status.starts_with('4'), "{r:?}");

    // A temporary code of the last attempt, but the system gave up: delivery has ended.
    let gave_up = b"From: MAILER-DAEMON@mx.example.net\nTo: sender@example.com\nSubject: failure delivery\n\n\
Unable to deliver message to the following address(es).\n\n<someone@example.org>:\n\
Sorry, I wasn't able to establish an SMTP connection. (#4.4.1)\nI'm not going to try again; this message has been in the queue too long.\n";
    let r = &classify(gave_up).unwrap().recipients[0];
    assert!(r.permanent && !r.hard_bounce, "{r:?}");
    assert_eq!(r.status, "4.4.1");

    let dsn_failed = dsn("Final-Recipient: rfc822; a@example.org\nAction: failed\nStatus: 4.4.7\n");
    assert!(classify(&dsn_failed).unwrap().recipients[0].permanent);
    let dsn_delayed = dsn("Final-Recipient: rfc822; a@example.org\nAction: delayed\nStatus: 4.4.7\n");
    assert!(!classify(&dsn_delayed).unwrap().recipients[0].permanent);
}

#[test]
fn a_mail_system_returning_the_original_is_a_bounce_in_any_language() {
    let raw = "From: MAILER-DAEMON@mail.example.cn\nTo: list-admin@example.org\nSubject: =?gb2312?B?08q8/reiy83Kp7Dco6E=?=\n\
MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"b\"\n\n--b\nContent-Type: text/plain; charset=utf-8\n\n\
邮件无法发送到您指定的地址中。\n\n<someone@example.cn>:\n\n--b\nContent-Type: message/rfc822\n\n\
From: list-admin@example.org\nTo: someone@example.cn\nSubject: hi\n\nhello\n--b--\n";
    let c = classify(raw.as_bytes()).unwrap();
    assert_eq!(c.kind, Kind::Bounce);
    assert_eq!(c.recipients[0].address, "someone@example.cn");
}
