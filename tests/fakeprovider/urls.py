from allauth.socialaccount.providers.oauth2.urls import default_urlpatterns

from .provider import FakeProvider

urlpatterns = default_urlpatterns(FakeProvider)
