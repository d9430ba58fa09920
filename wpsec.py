"""The WPSec plugin API client."""
