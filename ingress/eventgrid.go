package ingress

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/hookbridge/hookbridge/schemas"
)

// Event Grid protocol names.
const (
	// HeaderEventType is Event Grid's aeg-event-type delivery header.
	HeaderEventType = "Aeg-Event-Type"
	// TypeSubscriptionValidation is the Event Grid-schema validation event.
	TypeSubscriptionValidation = "Microsoft.EventGrid.SubscriptionValidationEvent"

	eventTypeValidation = "SubscriptionValidation"
	eventTypeDeletion   = "SubscriptionDeletion"
)

// Media types of /eventgrid and the format each selects.
var eventGridFormats = map[string]schemas.Format{
	"application/json":                   schemas.FormatEventGrid,
	"application/cloudevents+json":       schemas.FormatCloudEvent,
	"application/cloudevents-batch+json": schemas.FormatCloudEventBatch,
}

var eventGridMediaTypes = map[string]bool{
	"application/json":                   true,
	"application/cloudevents+json":       true,
	"application/cloudevents-batch+json": true,
}

// eventGridParse parses a delivery. A subscription-validation event inside
// a delivery is never queued (nor answered: that takes aeg-event-type
// SubscriptionValidation and every verifier); it goes to the dead-letter
// queue with the rule it broke.
func eventGridParse(body []byte, mt string, p schemas.Provenance, dst *schemas.Parsed) error {
	if err := schemas.Parse(body, eventGridFormats[mt], p, dst); err != nil {
		return err
	}
	for i := len(dst.Events) - 1; i >= 0; i-- {
		if dst.Events[i].Type == TypeSubscriptionValidation {
			dst.Reject(i, "is a subscription validation event inside a delivery; send it alone with aeg-event-type: SubscriptionValidation")
		}
	}
	return nil
}

// eventGrid handles POST /eventgrid: Event Grid schema or CloudEvents
// deliveries, the subscription-validation handshake, and subscription
// deletion notices.
//
// Handshakes enqueue nothing. Whether Event Grid attaches its Entra token to
// the validation request is not documented, so on a handshake the Entra
// verifier applies only when an Authorization header is present; API keys
// (which are part of the subscription's URL) always apply. A handshake can
// therefore make hookbridge echo a validation code, and nothing else:
// delivering events always requires every verifier.
func (s *Server) eventGrid(c echo.Context, r *route) error {
	req := c.Request()
	kind := req.Header.Get(HeaderEventType)
	switch kind {
	case eventTypeValidation:
		return s.eventGridValidation(c, r)
	case eventTypeDeletion:
		if _, err := s.verify(c, r, true, nil); err != nil {
			return err
		}
		s.log.Warn("Event Grid deleted its subscription to this endpoint; no more events will arrive through it",
			"subscription", req.Header.Get("Aeg-Subscription-Name"))
		setOutcome(c, outcomeHandshake, "subscription_deletion")
		return c.NoContent(http.StatusOK)
	}
	return s.ingest(c, r, eventGridMediaTypes, eventGridParse)
}

// eventGridValidation answers the Event Grid-schema validation handshake
// with {"validationResponse": code}, and logs the validation URL for manual
// validation.
func (s *Server) eventGridValidation(c echo.Context, r *route) error {
	if _, err := s.verify(c, r, true, nil); err != nil {
		return err
	}
	if _, err := mediaType(c.Request().Header.Get("Content-Type"), map[string]bool{"application/json": true}); err != nil {
		return err
	}
	reserved, err := s.reserveBody(c.Request())
	if err != nil {
		return err
	}
	defer s.bodies.Release(reserved)
	sc, owned := s.scratchOf(c)
	if owned {
		defer s.putScratch(sc)
	}
	if err := readBody(c, &sc.body, s.cfg.MaxBodyBytes); err != nil {
		return err
	}
	events, err := schemas.ParseEventGrid(sc.body.Bytes(), schemas.Provenance{Received: time.Now(), Route: r.name, Verifier: r.verifier})
	if err != nil {
		return parseError(err)
	}
	if len(events) != 1 || events[0].Type != TypeSubscriptionValidation {
		return badRequest(CauseInvalidEvent, fmt.Sprintf("aeg-event-type SubscriptionValidation needs exactly one %s event", TypeSubscriptionValidation), nil)
	}
	var data struct {
		Code string `json:"validationCode"`
		URL  string `json:"validationUrl"`
	}
	if err := json.Unmarshal(events[0].Data, &data); err != nil || data.Code == "" {
		return badRequest(CauseInvalidEvent, "the validation event has no data.validationCode", nil)
	}
	s.log.Info("Event Grid subscription validation answered",
		"topic", events[0].Source, "subscription", c.Request().Header.Get("Aeg-Subscription-Name"),
		"manual_validation_url", data.URL)
	setOutcome(c, outcomeHandshake, "subscription_validation")
	return c.JSON(http.StatusOK, map[string]string{"validationResponse": data.Code})
}

// eventGridOptions answers the CloudEvents abuse-protection handshake
// (OPTIONS with WebHook-Request-Origin) for an allowed origin.
func (s *Server) eventGridOptions(c echo.Context, r *route) error {
	if _, err := s.verify(c, r, true, nil); err != nil {
		return err
	}
	req := c.Request()
	origin := strings.TrimSpace(req.Header.Get("WebHook-Request-Origin"))
	if origin == "" {
		return badRequest(CauseInvalidHandshake, "missing WebHook-Request-Origin; this is the CloudEvents abuse-protection handshake", nil)
	}
	if !s.originAllowed(origin) {
		return &Error{Status: http.StatusForbidden, Cause: CauseOriginNotAllowed,
			Message: "WebHook-Request-Origin is not an allowed origin", Err: fmt.Errorf("origin %q", origin)}
	}
	if cb := req.Header.Get("WebHook-Request-Callback"); cb != "" {
		s.log.Info("CloudEvents abuse-protection handshake: a manual validation callback was offered",
			"origin", origin, "callback", cb)
	}
	h := c.Response().Header()
	h.Set("WebHook-Allowed-Origin", origin)
	h.Set("WebHook-Allowed-Rate", s.cfg.EventGridAllowedRate)
	h.Set("Allow", "POST, OPTIONS")
	setOutcome(c, outcomeHandshake, "abuse_protection")
	return c.NoContent(http.StatusOK)
}

func (s *Server) originAllowed(origin string) bool {
	for _, o := range s.cfg.EventGridAllowedOrigins {
		if o == "*" || strings.EqualFold(o, origin) {
			return true
		}
	}
	return false
}
