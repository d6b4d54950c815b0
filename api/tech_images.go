package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"

	"github.com/gin-gonic/gin"

	"github.com/cm4bench/cm4bench/api/images"
	"github.com/cm4bench/cm4bench/internal/contract"
)

// defaultImage is what Deploy writes to a board with no image of its own:
// the technician's choice (PUT /images/default) while that image exists,
// else the server's --image. A chosen image deleted behind the server's
// back (by hand, from the data directory) falls back with a warning.
func (s *Server) defaultImage(ctx context.Context) (string, error) {
	chosen, err := s.Store.DefaultImage(ctx)
	if err != nil {
		return "", err
	}
	if chosen != "" {
		if _, err := s.Images.Stat(ctx, chosen); err == nil {
			return chosen, nil
		}
		s.Logger.Warn("the chosen default image is gone; using --image", "image", chosen)
	}
	return s.Images.DefaultName(), nil
}

func (s *Server) handleImages(c *gin.Context) error {
	imgs, err := s.Images.List(c)
	if err != nil {
		return err
	}
	def, err := s.defaultImage(c)
	if err != nil {
		return err
	}
	for i := range imgs {
		imgs[i].Default = imgs[i].Name == def
	}
	writeJSON(c.Writer, http.StatusOK, imgs)
	return nil
}

// handleSetDefaultImage chooses the bench default image ("" = --image).
func (s *Server) handleSetDefaultImage(c *gin.Context) error {
	var req contract.DefaultImageRequest
	if err := s.decodeJSON(c.Request, &req); err != nil {
		return err
	}
	ctx := c.Request.Context()
	if req.Image != "" {
		if _, err := s.Images.Stat(ctx, req.Image); err != nil {
			return err
		}
	}
	if err := s.Store.SetDefaultImage(ctx, req.Image); err != nil {
		return err
	}
	def, err := s.defaultImage(ctx)
	if err != nil {
		return err
	}
	msg := "default image: " + def
	if def == "" {
		msg = "no default image"
	}
	s.emit(ctx, contract.Event{Kind: contract.EventImageDefault, Message: msg,
		Fields: map[string]any{"image": def}})
	writeJSON(c.Writer, http.StatusOK, contract.DefaultImageRequest{Image: def})
	return nil
}

func (s *Server) handleAddImage(c *gin.Context) error {
	name := c.Query("name")
	if name == "" {
		return httpErr(http.StatusBadRequest, "missing ?name=FILE.img[.gz|.xz|.zst]")
	}
	im, err := s.Images.Add(c.Request.Context(), name, c.Request.Body)
	if err != nil {
		if errors.Is(err, images.ErrBadName) || errors.Is(err, images.ErrExists) || errors.Is(err, images.ErrIsDefault) {
			return err
		}
		if writeCode(err) == http.StatusInsufficientStorage {
			return &HTTPError{Code: http.StatusInsufficientStorage, Msg: "image upload failed: the server's disk is full", Err: err}
		}
		return &HTTPError{Code: http.StatusBadRequest, Msg: "image upload failed: " + publicErr(err), Err: err}
	}
	s.emit(c.Request.Context(), contract.Event{Kind: contract.EventImageAdded, Message: fmt.Sprintf("image %s added (%d bytes raw)", im.Name, im.Size),
		Fields: map[string]any{"image": im.Name, "size": im.Size, "sha256": im.SHA256}})
	writeJSON(c.Writer, http.StatusCreated, im)
	return nil
}

// publicErr strips server paths from an error for a client.
func publicErr(err error) string {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Op + ": " + pe.Err.Error()
	}
	return err.Error()
}

func (s *Server) handleRemoveImage(c *gin.Context) error {
	name := c.Param("name")
	chosen, err := s.Store.DefaultImage(c)
	if err != nil {
		return err
	}
	if chosen == name {
		return httpErr(http.StatusConflict, "%s is the bench default image: set another default first", name)
	}
	if err := s.Images.Remove(name); err != nil {
		return err
	}
	s.emit(c.Request.Context(), contract.Event{Kind: contract.EventImageRemoved, Message: "image " + name + " removed", Fields: map[string]any{"image": name}})
	writeJSON(c.Writer, http.StatusOK, map[string]string{"status": "removed", "image": name})
	return nil
}
