package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

// getJSON GETs url (on loopback, no proxy) and decodes its JSON answer
// into v; an answer other than 200 is an error.
func getJSON(url string, v any) error {
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{Proxy: nil}}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: status %d", url, resp.StatusCode)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}
