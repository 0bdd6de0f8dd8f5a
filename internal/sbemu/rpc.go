package sbemu

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/Azure/go-amqp"
)

// rpc answers a request on a $cbs or $management link. The response goes
// out on the client's receiver link whose target is the request's reply-to.
func (s *Server) rpc(l *link, body []byte) Described {
	req := &amqp.Message{}
	if err := req.UnmarshalBinary(body); err != nil {
		return described(codeRejected, amqpError("amqp:decode-error", err.Error()))
	}
	if req.Properties == nil || req.Properties.ReplyTo == nil {
		return described(codeRejected, amqpError("amqp:invalid-field", "request without reply-to"))
	}
	op, _ := req.ApplicationProperties["operation"].(string)
	var status int32
	var desc string
	var value any
	var delay time.Duration
	if l.kind == kindCBS {
		status, desc, delay = s.putToken(l, op, req)
	} else {
		status, desc, value = s.management(l, op, req)
		s.events.add(Event{Kind: EventManagement, Conn: l.sess.c.id, Entity: l.mgmtQueue.name, Detail: fmt.Sprintf("%s %d", op, status)})
	}
	resp := &amqp.Message{
		Properties:            &amqp.MessageProperties{CorrelationID: fmt.Sprint(req.Properties.MessageID)},
		ApplicationProperties: map[string]any{"statusCode": status, "statusDescription": desc},
		Value:                 value,
	}
	payload, err := resp.MarshalBinary()
	if err != nil {
		s.log("encode %s response: %v", op, err)
		return described(codeAccepted)
	}
	replyTo := *req.Properties.ReplyTo
	c := l.sess.c
	send := func() {
		for _, ss := range c.sessions {
			for _, rl := range ss.links {
				if rl.clientRx && rl.replyTo == replyTo {
					rl.sendRPC(payload)
					return
				}
			}
		}
	}
	if delay > 0 {
		time.AfterFunc(delay, func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if !c.closed {
				send()
			}
		})
	} else {
		send()
	}
	return described(codeAccepted)
}

// putToken answers a CBS put-token: 200, unless a fault says otherwise or
// the server checks SAS signatures and this one is wrong.
func (s *Server) putToken(l *link, op string, req *amqp.Message) (int32, string, time.Duration) {
	name, _ := req.ApplicationProperties["name"].(string)
	s.events.add(Event{Kind: EventCBS, Conn: l.sess.c.id, Entity: name})
	if op != "put-token" {
		return 400, "unsupported CBS operation " + op, 0
	}
	if status, delay, ok := s.faults.cbs(); ok {
		if status == 0 {
			return 200, "OK", delay
		}
		return int32(status), "fault injected by the emulator", delay
	}
	if s.cfg.SharedAccessKey != "" {
		token, _ := req.Value.(string)
		if err := checkSAS(token, s.cfg.SharedAccessKey, s.now()); err != nil {
			return 401, "unauthorized: " + err.Error(), 0
		}
	}
	return 200, "OK", 0
}

// checkSAS verifies a SharedAccessSignature token against key.
func checkSAS(token, key string, now time.Time) error {
	fields, ok := strings.CutPrefix(token, "SharedAccessSignature ")
	if !ok {
		return fmt.Errorf("not a SharedAccessSignature token")
	}
	v, err := url.ParseQuery(fields)
	if err != nil {
		return fmt.Errorf("malformed token: %w", err)
	}
	sr, sig, se := v.Get("sr"), v.Get("sig"), v.Get("se")
	exp, err := strconv.ParseInt(se, 10, 64)
	if err != nil || now.Unix() > exp {
		return fmt.Errorf("token expired or without expiry")
	}
	mac := hmac.New(sha256.New, []byte(key))
	mac.Write([]byte(url.QueryEscape(sr) + "\n" + se))
	if !hmac.Equal([]byte(base64.StdEncoding.EncodeToString(mac.Sum(nil))), []byte(sig)) {
		// The SDK signs the escaped, lower-cased resource.
		mac = hmac.New(sha256.New, []byte(key))
		mac.Write([]byte(strings.ToLower(url.QueryEscape(sr)) + "\n" + se))
		if !hmac.Equal([]byte(base64.StdEncoding.EncodeToString(mac.Sum(nil))), []byte(sig)) {
			return fmt.Errorf("signature does not match")
		}
	}
	return nil
}
