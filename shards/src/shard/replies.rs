//! Replies of several messages. A job's status too big for one message goes as parts with the
//! request's id (`Encoder::job_status_parts`: at most about 4 MiB each, `more` on all but the
//! last), all in one go and in order: written to the connection here, or handed to its shard
//! in one peer batch, which keeps them in order too.

use super::*;

impl Shard {
    /// Sends a reply of several messages, in order.
    pub(super) fn reply_parts(&mut self, reply: ReplyTo, parts: Vec<Vec<u8>>) {
        for part in parts {
            self.reply(reply, part);
        }
    }
}
