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

// rpcReply is the answer to a $cbs or $management request.
type rpcReply struct {
	status    int32
	desc      string
	condition string // for failures: the error condition clients map the status to
	value     any
	delay     time.Duration // injected by a CBS fault
}

func okReply(value any) rpcReply { return rpcReply{status: 200, desc: "OK", value: value} }

func failReply(status int32, condition, desc string) rpcReply {
	return rpcReply{status: status, condition: condition, desc: desc}
}

// rpc answers a request on a $cbs or $management link. The response goes
// out on the client's receiver link that the request's reply-to names.
func (s *Server) rpc(l *link, body []byte) Described {
	req := &amqp.Message{}
	if err := req.UnmarshalBinary(body); err != nil {
		return described(codeRejected, amqpError("amqp:decode-error", err.Error()))
	}
	if req.Properties == nil || req.Properties.ReplyTo == nil {
		return described(codeRejected, amqpError("amqp:invalid-field", "request without reply-to: set reply-to to the address or name of your receiver link"))
	}
	op, _ := req.ApplicationProperties["operation"].(string)
	var r rpcReply
	// The two nodes name their status properties differently, as on Service
	// Bus: the CBS node status-code, the management node statusCode (the
	// JavaScript SDK reads statusCode to spot 204 on a peek).
	props := map[string]any{}
	if l.kind == kindCBS {
		r = s.putToken(l, op, req)
		props["status-code"], props["status-description"] = r.status, r.desc
	} else {
		r = s.management(l, op, req)
		props["statusCode"], props["statusDescription"] = r.status, r.desc
		if r.condition != "" {
			props["errorCondition"] = r.condition
		}
		s.events.add(Event{Kind: EventManagement, Conn: l.sess.c.id, Entity: l.mgmtQueue.name, Detail: fmt.Sprintf("%s %d", op, r.status)})
	}
	resp := &amqp.Message{
		// The request's message-id, of whatever type it had.
		Properties:            &amqp.MessageProperties{CorrelationID: req.Properties.MessageID},
		ApplicationProperties: props,
		Value:                 r.value,
	}
	payload, err := resp.MarshalBinary()
	if err != nil {
		s.log("encode %s response: %v", op, err)
		return described(codeAccepted)
	}
	replyTo := *req.Properties.ReplyTo
	c := l.sess.c
	send := func() {
		if rl := c.replyLink(replyTo); rl != nil {
			rl.sendRPC(payload)
			return
		}
		s.log("conn %d: no receiver link %q for the %s response", c.id, replyTo, op)
	}
	if r.delay > 0 {
		time.AfterFunc(r.delay, func() {
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

// replyLink finds the $cbs or $management receiver link that a request's
// reply-to names: by its target address (the Go SDK's way) or, failing
// that, by its link name (the JavaScript SDK attaches its CBS receiver with
// no target address and puts the link name in reply-to). Service Bus
// routes by either.
func (c *conn) replyLink(replyTo string) *link {
	var byName *link
	for rl := range c.links() {
		if !rl.clientRx || rl.kind == kindEntity {
			continue
		}
		if rl.replyTo == replyTo {
			return rl
		}
		if byName == nil && rl.name == replyTo {
			byName = rl
		}
	}
	return byName
}

// putToken answers a CBS put-token: 200, unless a fault says otherwise or
// the server checks SAS signatures and this one is wrong.
func (s *Server) putToken(l *link, op string, req *amqp.Message) rpcReply {
	name, _ := req.ApplicationProperties["name"].(string)
	s.events.add(Event{Kind: EventCBS, Conn: l.sess.c.id, Entity: name})
	if op != "put-token" {
		return failReply(400, "amqp:not-implemented", "unsupported CBS operation "+op+": only put-token is")
	}
	if status, delay, set := s.faults.cbs(); set {
		if status == 0 {
			r := okReply(nil)
			r.delay = delay
			return r
		}
		return rpcReply{status: int32(status), desc: "fault injected by the emulator", delay: delay}
	}
	if s.cfg.SharedAccessKey != "" {
		token, _ := req.Value.(string)
		if err := checkSAS(token, s.cfg.SharedAccessKey, s.now()); err != nil {
			return failReply(401, "amqp:unauthorized-access", "unauthorized: "+err.Error())
		}
	}
	return okReply(nil)
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
