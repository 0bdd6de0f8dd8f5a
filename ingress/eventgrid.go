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

// Media types of /eventgrid and the parser each selects.
var eventGridParsers = map[string]func([]byte, schemas.Provenance) ([]schemas.Event, error){
	"application/json":                   schemas.ParseEventGrid,
	"application/cloudevents+json":       schemas.ParseCloudEvent,
	"application/cloudevents-batch+json": schemas.ParseCloudEventBatch,
}

var eventGridMediaTypes = map[string]bool{
	"application/json":                   true,
	"application/cloudevents+json":       true,
	"application/cloudevents-batch+json": true,
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
		if _, err := s.verify(c, r, true); err != nil {
			return err
		}
		s.log.Warn("Event Grid deleted its subscription to this endpoint; no more events will arrive through it",
			"subscription", req.Header.Get("Aeg-Subscription-Name"))
		setOutcome(c, outcomeHandshake, "subscription_deletion")
		return c.NoContent(http.StatusOK)
	}
	parse := func(body []byte, mt string, p schemas.Provenance) ([]schemas.Event, error) {
		events, err := eventGridParsers[mt](body, p)
		if err != nil {
			return nil, err
		}
		for i := range events {
			if events[i].Type == TypeSubscriptionValidation {
				return nil, &schemas.ParseError{Index: i, Reason: "is a subscription validation event; send it alone with aeg-event-type: SubscriptionValidation", Err: schemas.ErrInvalidEvent}
			}
		}
		return events, nil
	}
	return s.ingest(c, r, eventGridMediaTypes, parse)
}

// eventGridValidation answers the Event Grid-schema validation handshake
// with {"validationResponse": code}, and logs the validation URL for manual
// validation.
func (s *Server) eventGridValidation(c echo.Context, r *route) error {
	if _, err := s.verify(c, r, true); err != nil {
		return err
	}
	if _, err := mediaType(c.Request().Header.Get("Content-Type"), map[string]bool{"application/json": true}); err != nil {
		return err
	}
	buf := s.getBuffer()
	defer s.putBuffer(buf)
	if err := readBody(c, buf, s.cfg.MaxBodyBytes); err != nil {
		return err
	}
	events, err := schemas.ParseEventGrid(buf.Bytes(), schemas.Provenance{Received: time.Now(), Route: r.name, Verifier: r.verifier})
	if err != nil {
		return parseError(err)
	}
	if len(events) != 1 || events[0].Type != TypeSubscriptionValidation {
		return &Error{Status: http.StatusBadRequest, Cause: CauseInvalidEvent,
			Message: fmt.Sprintf("aeg-event-type SubscriptionValidation needs exactly one %s event", TypeSubscriptionValidation)}
	}
	var data struct {
		Code string `json:"validationCode"`
		URL  string `json:"validationUrl"`
	}
	if err := json.Unmarshal(events[0].Data, &data); err != nil || data.Code == "" {
		return &Error{Status: http.StatusBadRequest, Cause: CauseInvalidEvent, Message: "the validation event has no data.validationCode"}
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
	if _, err := s.verify(c, r, true); err != nil {
		return err
	}
	req := c.Request()
	origin := strings.TrimSpace(req.Header.Get("WebHook-Request-Origin"))
	if origin == "" {
		return &Error{Status: http.StatusBadRequest, Cause: CauseInvalidHandshake,
			Message: "missing WebHook-Request-Origin; this is the CloudEvents abuse-protection handshake"}
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
